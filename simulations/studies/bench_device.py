"""Throughput on this machine, per device and precision: the encoder as bare timm runs it against
the project's encoding path, side by side in one run, and LoRA and DP-SGD training steps.

    python simulations/studies/bench_device.py                       # omnirad-small, -base at 224 px
    python simulations/studies/bench_device.py --encoders vit-tiny --size 64 --images 256
    python simulations/studies/bench_device.py --json results/bench-device.json

- **bare timm**: ``timm.create_model(...)`` in eval mode under ``torch.inference_mode`` (and
  autocast for bf16/fp16), fed batches already normalised and on the device: the ceiling.
- **encode**: ``omnirad.training.encode``, what a site runs: uint8 images from the host, pinned
  and copied per batch, converted and normalised on the device, features back on the CPU in
  float32. The ratio encode / bare timm is what the project's path costs (target >= 0.9).
- **LoRA steps/s**: LoRA r=16 on every block's qkv, proj, fc1, fc2 and a linear head, AdamW,
  batches of images (``omnirad.training.train_model``).
- **DP-SGD steps/s**: a linear head on features with opacus (``omnirad.privacy.train_private``).

Weights are random (throughput does not depend on them; nothing is downloaded). Each figure is the
best of ``--repeats`` timed passes after a warm-up pass.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch

from omnirad.adapters import trainable_state
from omnirad.configure import load_config
from omnirad.devices import Placement, resolve_placement
from omnirad.encoders import ENCODERS, create_encoder, encoder_input
from omnirad.models import new_model
from omnirad.privacy import PrivacyLedger, round_plan, train_private
from omnirad.tasks import MULTI_CLASS, TaskSpec
from omnirad.training import encode, train_model

TASK = TaskSpec(MULTI_CLASS, ("a", "b", "c", "d"))


def synchronised(placement: Placement) -> None:
    if placement.device.type == "cuda":
        torch.cuda.synchronize(placement.device)


def best_seconds(run: Callable[[], Any], placement: Placement, repeats: int) -> float:
    """Best wall time of ``repeats`` passes after one warm-up pass."""
    run()
    synchronised(placement)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        synchronised(placement)
        times.append(time.perf_counter() - start)
    return min(times)


def encoder_throughput(name: str, size: int, placement: Placement, images: np.ndarray, batch: int,
                       repeats: int) -> dict[str, float]:
    """Images per second of bare timm and of the project's ``encode``, on the same images."""
    encoder = create_encoder(name, "", size)
    bare = timm.create_model(ENCODERS[name].timm_name, pretrained=False, num_classes=0,
                             img_size=encoder.input_size, patch_size=encoder.patch_size).eval()
    bare = placement.place(bare)
    mean, std = encoder.mean, encoder.std
    ready = [placement.move(encoder_input(torch.from_numpy(images[i : i + batch]).unsqueeze(1), mean, std,
                                          encoder.input_size)) for i in range(0, len(images), batch)]

    def bare_forward() -> None:
        with torch.inference_mode(), placement.autocast():
            for x in ready:
                bare(x)

    bare_s = best_seconds(bare_forward, placement, repeats)
    ours_s = best_seconds(lambda: encode(encoder, images, batch_size=batch, placement=placement), placement, repeats)
    return {"bare-timm-img/s": len(images) / bare_s, "encode-img/s": len(images) / ours_s,
            "ratio": bare_s / ours_s}


def training_steps(name: str, size: int, placement: Placement, images: np.ndarray, batch: int,
                   repeats: int) -> dict[str, float]:
    """LoRA and DP-SGD optimiser steps per second."""
    labels = np.arange(len(images)) % TASK.num_outputs
    cfg = load_config({"model.encoder": name, "model.adapter": "lora", "data.size": size, "train.batch-size": batch})
    lora = new_model(cfg)
    steps = -(-len(images) // batch)
    inputs = torch.from_numpy(images).unsqueeze(1)
    lora_s = best_seconds(lambda: train_model(lora, inputs, labels, TASK, train=cfg.train, epochs=1,
                                              placement=placement), placement, repeats)
    dp_cfg = load_config({"model.encoder": name, "model.adapter": "linear", "data.size": size, "privacy.dp": True,
                          "train.batch-size": batch, "train.local-epochs": 1, "privacy.noise-multiplier": 1.0})
    head = new_model(dp_cfg)
    features = encode(create_encoder(name, "", size), images, batch_size=batch, placement=placement)
    plan = round_plan(dp_cfg, len(features))
    start_state = trainable_state(head)

    def private_round() -> None:
        head.load_state_dict(start_state, strict=False)
        head.train()  # opacus wraps only a module in training mode; the last round left it in eval
        train_private(head, features, labels, TASK, cfg=dp_cfg, plan=plan, ledger=PrivacyLedger(), seed=0,
                      placement=placement)

    dp_s = best_seconds(private_round, placement, repeats)
    return {"lora-steps/s": steps / lora_s, "dp-sgd-steps/s": plan.steps / dp_s}


def placements_here() -> list[Placement]:
    """fp32 and bf16 on the CPU; on a GPU also its mixed precisions."""
    found = [resolve_placement("cpu", "fp32"), resolve_placement("cpu", "bf16")]
    if torch.cuda.is_available():
        found = [resolve_placement("cuda", p) for p in ("fp32", "bf16", "fp16")
                 if p != "bf16" or torch.cuda.is_bf16_supported()] + found[:1]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python simulations/studies/bench_device.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoders", nargs="+", default=["omnirad-small", "omnirad-base"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=64, help="images per timed pass (thousands on a GPU)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--training", action="store_true", help="also LoRA and DP-SGD steps per second")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    images = np.random.default_rng(0).integers(0, 256, (args.images, args.size, args.size), dtype=np.uint8)
    rows = []
    print(f"{'encoder':>14} {'device':>10} {'prec':>5} {'timm img/s':>11} {'encode img/s':>13} {'ratio':>6}"
          + (f" {'LoRA st/s':>10} {'DP st/s':>8}" if args.training else ""), flush=True)
    for name in args.encoders:
        for placement in placements_here():
            row: dict[str, Any] = {"encoder": name, "size": args.size, "device": str(placement.device),
                                   "precision": placement.precision, "images": args.images, "batch": args.batch,
                                   **encoder_throughput(name, args.size, placement, images, args.batch, args.repeats)}
            if args.training:
                row.update(training_steps(name, args.size, placement, images, args.batch, args.repeats))
            rows.append(row)
            print(f"{name:>14} {row['device']:>10} {row['precision']:>5} {row['bare-timm-img/s']:>11.1f} "
                  f"{row['encode-img/s']:>13.1f} {row['ratio']:>6.2f}"
                  + (f" {row['lora-steps/s']:>10.2f} {row['dp-sgd-steps/s']:>8.2f}" if args.training else ""),
                  flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
