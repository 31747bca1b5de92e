"""Beam search against greedy decoding on the embedded captions, from the very same weights: the
pooled caption decoder of ``captioning_compare``'s recipe (800 training images at 32 px, 16 epochs:
as many as a site trains in its 8 rounds of 2) is trained once per seed, then its 200 test captions
are decoded with each beam width (``model.caption-beams``; 1 is greedy) and scored.

    python simulations/studies/caption_beams.py --beams 1 3 5 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from omnirad.adapters.caption_decoder import CaptionDecoder
from omnirad.configure import load_config
from omnirad.data.sites import pooled_train, server_test_set, task_info
from omnirad.devices import placement_for
from omnirad.models import encoder_for, model_inputs, new_model
from omnirad.training import evaluate_model, train_model
from omnirad_fl.simulations.side_by_side import mean_std

RECIPE = {"data.task": "captioning", "model.adapter": "caption-decoder", "data.size": 32, "data.num-train": 800,
          "data.num-test": 200, "model.caption-width": 64, "data.num-sites": 4}
EPOCHS = 16
METRICS = ("bleu-4", "rouge-l", "cider", "finding-accuracy")


def decode_widths(seed: int, widths: list[int]) -> list[dict[str, float]]:
    """One row per beam width: the test scores of one trained decoder, and the seconds decoding took."""
    cfg = load_config({**RECIPE, "run.seed": seed})
    train, test = pooled_train(cfg.data), server_test_set(cfg.data)
    assert test is not None
    encoder, task, placement = encoder_for(cfg), task_info(cfg.data), placement_for(cfg.run)
    model = new_model(cfg)
    train_model(model, model_inputs(cfg, encoder, train.images, "pooled train"), train.labels, task, train=cfg.train,
                epochs=EPOCHS, seed=seed, placement=placement)
    test_inputs = model_inputs(cfg, encoder, test.images, "test")
    (decoder,) = [m for m in model.modules() if isinstance(m, CaptionDecoder)]
    rows = []
    for width in widths:
        decoder.beams = width
        started = time.perf_counter()
        metrics = evaluate_model(model, test_inputs, test.labels, task, placement=placement)
        rows.append({"seed": seed, "beams": width, **{k: metrics[k] for k in METRICS},
                     "decode-seconds": round(time.perf_counter() - started, 2)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--beams", nargs="+", type=int, default=[1, 3, 5])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, help="JSON lines, one per seed and beam width")
    args = parser.parse_args(argv)
    rows = [row for seed in args.seeds for row in decode_widths(seed, args.beams)]
    if args.out:
        args.out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    print(f"| beams | seeds | {' | '.join(METRICS)} | seconds to decode 200 |\n|---|---|{'---|' * len(METRICS)}---|")
    for width in args.beams:
        mine = [r for r in rows if r["beams"] == width]
        print(f"| {width} | {len(mine)} | " + " | ".join(mean_std([r[k] for r in mine]) for k in METRICS)
              + f" | {mean_std([r['decode-seconds'] for r in mine])} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
