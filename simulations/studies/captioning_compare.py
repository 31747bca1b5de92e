"""Federated vs pooled vs local-only captioning on the embedded data: the numbers of docs/captioning.md.

Runs the sweep (``simulations.sweep``: ``flwr run .`` per seed for FedAvg, pooled and local-only
training on the very same split, results appended to ``--out`` and resumed from it), then prints
every caption score of the final global model on the server's test set (local only: averaged over
the sites' own models), mean ± std over seeds, with the bytes each site sends per round:

    python simulations/studies/captioning_compare.py --out docs/results/captioning.jsonl
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from omnirad_fl.simulations.side_by_side import mean_std, values
from omnirad_fl.simulations.sweep import run_sweep

SHARED = ("data.task='captioning' model.adapter='caption-decoder' data.size=32 data.num-sites=4 data.num-train=800 "
          "data.num-test=200 num-server-rounds=8 train.local-epochs=2 model.caption-width=64")
SPLIT = "one style per site:data.partition='modality'"
METRICS = ("bleu-4", "rouge-l", "cider", "finding-accuracy")


def caption_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: a line per variant, each caption score's mean ± std over seeds, bytes up per site and round."""
    lines = ["| training | seeds | " + " | ".join(METRICS) + " | bytes up per site and round |",
             "|---|---|" + "---|" * (len(METRICS) + 1)]
    for variant in dict.fromkeys(r["variant"] for r in rows):
        runs = [r for r in rows if r["variant"] == variant]
        sent = {r["bytes-up-per-site-round"] for r in runs if r.get("bytes-up-per-site-round")}
        cells = [mean_std(values(runs, "global", m)) for m in METRICS]
        lines.append(f"| {variant} | {len(runs)} | " + " | ".join(cells) + f" | {', '.join(map(str, sorted(sent))) or '-'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("results/captioning.jsonl"))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--port", type=int, default=39391, help="the loopback SuperLink's HTTP port")
    args = parser.parse_args(argv)
    rows = run_sweep(["fedavg:"], [SPLIT], args.seeds, shared_overrides=SHARED, out=args.out, port=args.port)
    print(f"\n{SHARED}\n{SPLIT}\n\n{caption_table(rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
