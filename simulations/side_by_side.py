"""A sweep run with ``--references-per-variant``, laid out as the question a hospital asks: for each
head and recipe, how close does the federation come to pooling the images?

    python -m omnirad_fl.simulations.side_by_side docs/results/heads.jsonl --metric macro-f1

One table per split; a line per variant: its pooled twin (the same configuration trained on the
union of the sites' data), local-only training (each site alone, on the server's test set), the
federated global model at the end and at the round chosen by federated validation, the worst
site's validation score, and the federated minus pooled difference. Mean ± standard deviation
over seeds; the best pooled value of the split is starred.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

POOLED, LOCAL = "pooled (central)", "local only"  # the sweep's reference rows, labelled "<reference>: <variant>"


def read_rows(path: Path) -> list[dict[str, Any]]:
    """A sweep's result rows, one JSON object per line."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def values(rows: list[dict[str, Any]], view: str, metric: str) -> list[float]:
    return [r[view][metric] for r in rows if not math.isnan(r.get(view, {}).get(metric, math.nan))]


def mean_std(found: list[float]) -> str:
    return f"{np.mean(found):.3f} ± {np.std(found):.3f}" if found else "-"


def split_table(rows: list[dict[str, Any]], metric: str) -> list[str]:
    variants = list(dict.fromkeys(r["variant"] for r in rows if not r.get("reference")))
    of = {(kind, v): [r for r in rows if r["variant"] == (f"{kind}: {v}" if kind else v)
                      and r.get("reference", "") == kind] for v in variants for kind in (POOLED, LOCAL, "")}
    pooled_means = {v: float(np.mean(found)) for v in variants if (found := values(of[(POOLED, v)], "global", metric))}
    best = max(pooled_means.values(), default=math.nan)
    lines = ["| head, recipe | pooled | local only | federated | federated, selected round | worst site, federated | "
             "federated - pooled |", "|---|---|---|---|---|---|---|"]
    for v in variants:
        pooled, federated = values(of[(POOLED, v)], "global", metric), values(of[("", v)], "global", metric)
        star = " *" if pooled and pooled_means[v] == best else ""
        gap = f"{np.mean(federated) - np.mean(pooled):+.3f}" if pooled and federated else "-"
        lines.append(f"| {v} | {mean_std(pooled)}{star} | {mean_std(values(of[(LOCAL, v)], 'global', metric))} | "
                     f"{mean_std(federated)} | {mean_std(values(of[('', v)], 'selected', metric))} | "
                     f"{mean_std(values(of[('', v)], 'worst-site', metric))} | {gap} |")
    return lines


def report(rows: list[dict[str, Any]], metric: str) -> str:
    lines = []
    for split in dict.fromkeys(r["split"] for r in rows):
        here = [r for r in rows if r["split"] == split]
        seeds = sorted({r["seed"] for r in here})
        lines += ["", f"**{split}** ({metric}, server test set; seeds {', '.join(map(str, seeds))}; * best pooled)", "",
                  *split_table(here, metric)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omnirad_fl.simulations.side_by_side", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="a sweep's JSON lines, run with --references-per-variant")
    parser.add_argument("--metric", default="macro-f1")
    args = parser.parse_args(argv)
    if not args.results.is_file():
        parser.error(f"{args.results}: no such file")
    print(report(read_rows(args.results), args.metric))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
