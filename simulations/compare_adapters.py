"""Federated runs of several adapters on the same split, side by side: quality and bytes per round.

Each adapter runs through ``flwr run .`` (as ``make demo`` does) with the same data, split, seed
and rounds; the table shows the final test metrics, what one site sent per round, the trainable
parameter bytes and the wall time. Usage:

    python -m simulations.compare_adapters --adapters linear mlp lora full -- "data.size=32 num-server-rounds=10"
    python -m simulations.compare_adapters --adapters decoder -- "data.task='segmentation'"

Adapter-specific overrides go after the adapter name: ``lora:model.lora-rank=4,train.lr=0.001``.
"""

from __future__ import annotations

import argparse
import json
import sys

from flwr.common.config import parse_config_args

from omnirad.config import load_config
from omnirad.data.sites import task_info
from simulations.demo import run_simulation


def adapter_overrides(spec: str) -> tuple[str, str]:
    """``lora:model.lora-rank=4,train.lr=0.001`` -> ('lora', "model.adapter='lora' model.lora-rank=4 train.lr=0.001")."""
    name, _, extra = spec.partition(":")
    return spec, " ".join([f"model.adapter='{name}'", *[item for item in extra.split(",") if item]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapters", nargs="+", default=["linear", "mlp", "lora", "full"])
    parser.add_argument("run_config", nargs="?", default="", help="overrides shared by every run, as for make demo")
    args = parser.parse_args(argv)
    shared = args.run_config.strip()
    metrics = task_info(load_config(parse_config_args([shared]) if shared else {})).headline_metrics
    rows = []
    for spec in args.adapters:
        label, overrides = adapter_overrides(spec)
        summary_path = run_simulation(f"{shared} {overrides}".strip())
        if summary_path is None:
            print(f"{label}: the run did not finish (see the log above)", file=sys.stderr)
            return 1
        summary = json.loads(summary_path.read_text())
        rows.append({"adapter": label, **{m: summary["final"].get(m) for m in metrics},
                     "parameter-bytes": summary["adapter-parameter-bytes"],
                     "bytes-up-per-site-round": summary["bytes-up-per-site-round"],
                     "wall-seconds": summary["wall-seconds"], "run-folder": str(summary_path.parent)})
    print(f"\nShared overrides: {shared or '(defaults)'}")
    print("| adapter | " + " | ".join(f"test {m}" for m in metrics) + " | trainable bytes | sent per site per round | wall s |")
    print("|---|" + "---|" * (len(metrics) + 3))
    for row in rows:
        print(f"| {row['adapter']} | " + " | ".join(f"{row[m]:.3f}" for m in metrics)
              + f" | {row['parameter-bytes']:,} | {row['bytes-up-per-site-round']:,.0f} | {row['wall-seconds']:.0f} |")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
