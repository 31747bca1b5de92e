"""Central self-supervised pretraining on the pooled embedded images (no labels used): the
reference a federated pretraining is measured against, and a way to make an encoder file.

    python simulations/studies/pretrain_central.py weights/ssl-vit-tiny-32.safetensors --epochs 12 --batch-size 64 data.size=32
    python -m omnirad_fl.simulations.central_baselines --models linear model.weights=weights/ssl-vit-tiny-32.safetensors data.size=32

Configuration keys choose the images and encoder as in a run (``data.*``, ``model.encoder``,
``model.weights`` to start from); the output is a plain timm safetensors file for ``model.weights``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from omnirad.config import parse_overrides
from omnirad.configure import load_config
from omnirad.data.sites import pooled_train
from omnirad.ssl import SSL_OBJECTIVES, pretrain, save_encoder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python simulations/studies/pretrain_central.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="where to write the pretrained encoder (.safetensors)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--objective", choices=SSL_OBJECTIVES.names(), default="mae")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_intermixed_args(argv)
    cfg = load_config(parse_overrides(args.overrides))
    images = pooled_train(cfg.data).images
    started = time.perf_counter()
    state, history = pretrain(cfg.model.encoder, images, image_size=cfg.data.size, epochs=args.epochs,
                              batch_size=args.batch_size, lr=args.lr, seed=args.seed, weights=cfg.model.weights,
                              objective=args.objective)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_encoder(state, str(args.out))
    losses = ", ".join(f"{loss:.3f}" for loss in history)
    print(f"pretrained {cfg.model.encoder} ({args.objective}) on {len(images)} images for {args.epochs} epochs in "
          f"{time.perf_counter() - started:.0f} s (loss per epoch: {losses}); wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
