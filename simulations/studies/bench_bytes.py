"""Benchmark: what one site sends per round for each adapter, next to its trainable parameter bytes.

For each adapter a site runs one real local round (``LocalSite.fit``) on a few embedded images and
the reply's arrays are measured as Flower serialises them (``ArrayRecord.count_bytes``, what the
run folder reports as bytes up). The encoder's own bytes are printed for scale.

    python simulations/studies/bench_bytes.py [--encoder omnirad-small] [--size 224]
"""

from __future__ import annotations

import argparse
import json

from flwr.app import ArrayRecord

from omnirad.adapters import trainable_state
from omnirad.configure import load_config
from omnirad.models import encoder_for, new_model
from omnirad.site import LocalSite, RoundInputs

ADAPTERS = {
    "linear head": {"model.adapter": "linear"},
    "MLP head": {"model.adapter": "mlp"},
    "LoRA r=4 + linear head": {"model.adapter": "lora", "model.lora-rank": 4},
    "LoRA r=16 + linear head": {"model.adapter": "lora", "model.lora-rank": 16},
    "segmentation decoder": {"model.adapter": "decoder", "data.task": "segmentation"},
    "full fine-tuning + linear head": {"model.adapter": "full"},
}


def measure(base: dict, overrides: dict) -> dict[str, int]:
    cfg = load_config({**base, **overrides})
    start = trainable_state(new_model(cfg))
    sent, _ = LocalSite(cfg, 0).fit(RoundInputs(start, server_round=1))
    return {
        "parameter-bytes": sum(t.numel() * t.element_size() for t in start.values()),
        "sent-bytes": ArrayRecord(sent).count_bytes(),
        "tensors": len(sent),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="omnirad-small")
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    base = {"model.encoder": args.encoder, "data.size": args.size, "data.num-sites": 2, "data.partition": "iid",
            "data.num-train": 16, "data.num-test": 4, "data.min-site-samples": 2, "train.local-epochs": 1,
            "train.batch-size": 4}
    encoder_bytes = sum(p.numel() * p.element_size() for p in encoder_for(load_config(base)).parameters())
    print(f"{args.encoder} at {args.size} px; the encoder itself holds {encoder_bytes:,} parameter bytes\n")
    print("| adapter | trainable parameter bytes | sent per site per round | sent / parameters | tensors |")
    print("|---|---|---|---|---|")
    rows = {}
    for name, overrides in ADAPTERS.items():
        row = rows[name] = measure(base, overrides)
        print(f"| {name} | {row['parameter-bytes']:,} | {row['sent-bytes']:,} | "
              f"{row['sent-bytes'] / row['parameter-bytes']:.4f} | {row['tensors']} |", flush=True)
    print(json.dumps({"encoder-bytes": encoder_bytes, **rows}))


if __name__ == "__main__":
    main()
