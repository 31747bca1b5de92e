"""Federated runs side by side on the same split: adapters, strategies, faults; quality and bytes.

Each variant runs through ``flwr run .`` (as ``make demo`` does) with the shared overrides plus its
own; the table shows the final test metrics, what one site sent per round, the trainable parameter
bytes, the updates validation left out, and the wall time. A variant is ``label:key=value,...``:

    python -m omnirad_fl.simulations.compare_runs --shared "data.size=48 num-server-rounds=10" \
        "mlp:model.adapter='mlp'" "lora:model.adapter='lora',train.lr=0.001"
    python -m omnirad_fl.simulations.compare_runs --shared "data.num-sites=5" "clean:" "nan:faults.site=4,faults.kind='nan'"
"""

from __future__ import annotations

import argparse
import json
import sys

from flwr.common.config import parse_config_args

from omnirad.configure import load_config
from omnirad.data.sites import task_info
from omnirad_fl.simulations.demo import run_simulation


def variant_overrides(spec: str) -> tuple[str, str]:
    """``lora:model.adapter='lora',train.lr=0.001`` -> ('lora', "model.adapter='lora' train.lr=0.001")."""
    label, _, extra = spec.partition(":")
    return label, " ".join(item for item in extra.split(",") if item)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", help="label:key=value,... (one run each)")
    parser.add_argument("--shared", default="", help="overrides shared by every run, as for make demo")
    args = parser.parse_args(argv)
    shared = args.shared.strip()
    metrics = task_info(load_config(parse_config_args([shared]) if shared else {}).data).headline_metrics
    rows = []
    for spec in args.variants:
        label, overrides = variant_overrides(spec)
        summary_path = run_simulation(f"{shared} {overrides}".strip())
        if summary_path is None:
            print(f"{label}: the run did not finish (see the log above)", file=sys.stderr)
            return 1
        summary = json.loads(summary_path.read_text())
        rejected = sum(len(v) for v in summary.get("rejected-updates", {}).values())
        rows.append({"variant": label, **{m: summary["final"].get(m) for m in metrics}, "rejected": rejected,
                     "parameter-bytes": summary["adapter-parameter-bytes"],
                     "bytes-up-per-site-round": summary["bytes-up-per-site-round"],
                     "wall-seconds": summary["wall-seconds"], "run-folder": str(summary_path.parent)})
    print(f"\nShared overrides: {shared or '(defaults)'}")
    print("| variant | " + " | ".join(f"test {m}" for m in metrics)
          + " | trainable bytes | sent per site per round | updates left out | wall s |")
    print("|---|" + "---|" * (len(metrics) + 4))
    for row in rows:
        print(f"| {row['variant']} | " + " | ".join(f"{row[m]:.3f}" for m in metrics)
              + f" | {row['parameter-bytes']:,} | {row['bytes-up-per-site-round']:,.0f} | {row['rejected']} | {row['wall-seconds']:.0f} |")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
