"""How many rounds, and how many bytes, each federated variant of a sweep needs to come within a
margin of pooled (central) training on the same split: of its own pooled twin (the same head and
recipe on the pooled data) and of the best pooled result.

    python -m omnirad_fl.simulations.rounds_to_target results/heads.jsonl --metric accuracy --margin 0.01

A target is a pooled reference's score on the same seed (same split, same data) minus the margin. For each run: the first round
(0 is a closed-form head's) whose global test metric reaches it and the bytes each site sent up
until then, averaged over the seeds that reach it; and each site's upload over the whole run.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from omnirad_fl.simulations.side_by_side import POOLED, read_rows


def rounds_of(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def kib_up_per_site(line: dict[str, Any]) -> float:
    """What each site sent up in one round (statistics or adapter), in KiB."""
    return float(line["bytes-up"] / max(1, len(line["sites"])) / 1024)


def reached(lines: list[dict[str, Any]], metric: str, target: float) -> tuple[int, float] | None:
    """(round, KiB up per site until then) of the first round at or above ``target``."""
    up = 0.0
    for line in lines:
        up += kib_up_per_site(line)
        if line["global"].get(metric, -math.inf) >= target:
            return line["round"], up
    return None


def cell(runs: list[tuple[list[dict[str, Any]], float]], metric: str) -> str:
    """``seeds reaching | rounds (mean) | KiB up per site (mean)`` over (rounds, target) pairs."""
    hits = [h for lines, target in runs if (h := reached(lines, metric, target)) is not None]
    if not hits:
        return f"0 of {len(runs)} | - | -"
    rounds, ups = zip(*hits, strict=True)
    return f"{len(hits)} of {len(runs)} | {np.mean(rounds):.1f} | {np.mean(ups):,.0f}"


def pooled_scores(rows: list[dict[str, Any]], metric: str) -> dict[str, dict[int, float]]:
    """Each variant's pooled reference by seed (a FedPer reference has no global metric)."""
    found: dict[str, dict[int, float]] = {}
    for r in rows:
        if r.get("reference") == POOLED and metric in r["global"]:
            found.setdefault(r["variant"].removeprefix(f"{POOLED}: "), {})[r["seed"]] = r["global"][metric]
    return found


def report(rows: list[dict[str, Any]], metric: str, margin: float) -> str:
    lines = []
    for split in dict.fromkeys(r["split"] for r in rows):
        here = [r for r in rows if r["split"] == split]
        pooled = pooled_scores(here, metric)
        best_label = max(pooled, key=lambda variant: float(np.mean(list(pooled[variant].values()))))
        best = pooled[best_label]
        lines += ["", f"**{split}**: targets are the same seed's pooled score minus {margin:g} ({metric}); best "
                  f"pooled: {best_label}, {np.mean(list(best.values())):.3f}", "",
                  "| variant | its pooled twin | seeds reaching it | rounds (mean) | KiB up per site | "
                  "seeds reaching the best pooled | rounds (mean) | KiB up per site | KiB up per site, whole run |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for variant in dict.fromkeys(r["variant"] for r in here if not r.get("reference")):
            runs = [(r["seed"], rounds_of(Path(r["run-folder"])))
                    for r in here if r["variant"] == variant and not r.get("reference")]
            whole = f"{np.mean([sum(map(kib_up_per_site, lines)) for _, lines in runs]):,.0f}"
            to_best = cell([(lines, best[seed] - margin) for seed, lines in runs if seed in best], metric)
            twin = pooled.get(variant)
            if twin is None or not any(metric in line["global"] for _, lines in runs for line in lines):
                lines.append(f"| {variant} | - | no global model | - | - | - | - | - | {whole} |")
                continue
            own = cell([(lines, twin[seed] - margin) for seed, lines in runs if seed in twin], metric)
            lines.append(f"| {variant} | {np.mean(list(twin.values())):.3f} | {own} | {to_best} | {whole} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omnirad_fl.simulations.rounds_to_target", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="a sweep's JSON lines (with per-variant references)")
    parser.add_argument("--metric", default="accuracy")
    parser.add_argument("--margin", type=float, default=0.01)
    args = parser.parse_args(argv)
    print(report(read_rows(args.results), args.metric, args.margin))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
