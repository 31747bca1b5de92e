"""A multi-task federation against each task's federation alone, on the same sites and split.

Runs ``flwr run .`` once with every site's task (``multitask.site-tasks``), then once per task
with the other sites sitting out (``-``): the same images per site, the same seeds. With
``--unshared`` also the multi-task run with ``multitask.shared=false`` (tensors common to every
task, such as LoRA on the encoder, averaged within each task only). Prints a table per task and
appends one JSON line per run and task to ``--out``:

    python simulations/studies/multitask_compare.py region,region,region,lesions,lesions,lesions \\
        --shared "data.size=48 num-server-rounds=10" --out docs/results/multitask.jsonl

``--summarise FILE.jsonl --plot FILE.png`` turns such rows (several seeds) into a table of means
and standard deviations per variant and task, and a bar chart.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from omnirad.config import comma_list
from omnirad.multitask_check import SITS_OUT
from omnirad_fl.simulations.demo import run_simulation
from omnirad_fl.simulations.flower_local import DEFAULT_HTTP_PORT


def alone(site_tasks: list[str], task: str) -> str:
    """The assignment where only ``task``'s sites train."""
    return ",".join(name if name == task else SITS_OUT for name in site_tasks)


def run(label: str, overrides: str, port: int) -> dict[str, Any]:
    summary_path = run_simulation(overrides, port)
    if summary_path is None:
        raise RuntimeError(f"{label}: the run did not finish (see the log above)")
    return json.loads(summary_path.read_text()) | {"run-folder": str(summary_path.parent)}


def rows_of(label: str, summary: dict[str, Any], seed: str) -> list[dict[str, Any]]:
    """One row per task of a finished run: its test metrics and the run's traffic and time."""
    rows = []
    for task in summary["tasks"]:
        final = {k.partition("/")[2]: v for k, v in summary["final"].items() if k.startswith(f"{task}/")}
        rows.append({"variant": label, "adapter": summary["adapter"], "task": task, "seed": seed, **final,
                     "task-adapter-bytes": summary["task-adapter-bytes"][task], "bytes-up": summary["bytes-up"],
                     "bytes-down": summary["bytes-down"], "wall-seconds": summary["wall-seconds"],
                     "run-folder": summary["run-folder"]})
    return rows


def score(row: dict[str, Any]) -> float:
    """A row's selection metric: macro-F1 (classification) or Dice (segmentation)."""
    return float(row["macro-f1"] if "macro-f1" in row else row["dice"])


def summarise(rows: list[dict[str, Any]], plot: Path | None) -> str:
    """Mean and standard deviation over seeds of each variant's score per task (a Markdown table),
    and with ``plot`` a bar chart of them."""
    scores: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        scores[row["task"]][f"{row['variant']} ({row['adapter']})"].append(score(row))
    lines = ["| task | variant | test macro-F1 / Dice, mean ± sd | seeds |", "|---|---|---|---|"]
    for task, variants in scores.items():
        lines += [f"| {task} | {v} | {np.mean(x):.3f} ± {np.std(x):.3f} | {len(x)} |" for v, x in variants.items()]
    if plot is not None:
        fig = Figure(figsize=(7, 3.6))
        ax = fig.subplots()
        tasks = list(scores)
        variants = sorted({v for t in tasks for v in scores[t]})
        width = 0.8 / len(variants)
        for i, variant in enumerate(variants):
            values = [scores[t].get(variant, [np.nan]) for t in tasks]
            ax.bar([k + (i - (len(variants) - 1) / 2) * width for k in range(len(tasks))], [np.mean(v) for v in values],
                   width, yerr=[np.std(v) for v in values], capsize=3, label=variant)
        ax.set_xticks(range(len(tasks)), [f"{t} ({'Dice' if t == 'lesions' else 'macro-F1'})" for t in tasks])
        ax.set(ylabel="test score, mean ± sd over seeds", ylim=(0, 1))
        ax.legend(fontsize="small")
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        fig.savefig(plot, dpi=110)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python simulations/studies/multitask_compare.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("site_tasks", nargs="?", help="one task per site, comma-separated (region, finding, lesions)")
    parser.add_argument("--shared", default="", help="overrides for every run, as for make demo")
    parser.add_argument("--unshared", action="store_true", help="also the multi-task run with multitask.shared=false")
    parser.add_argument("--no-alone", action="store_true", help="skip the single-task federations")
    parser.add_argument("--out", type=Path, help="append the rows to this JSONL file")
    parser.add_argument("--port", type=int, default=DEFAULT_HTTP_PORT, help="the local SuperLink's HTTP port")
    parser.add_argument("--summarise", type=Path, help="summarise the rows of this JSONL file instead of running")
    parser.add_argument("--plot", type=Path, help="with --summarise: write a bar chart here")
    args = parser.parse_args(argv)
    if args.summarise:
        print(summarise([json.loads(line) for line in args.summarise.read_text().splitlines() if line], args.plot))
        return 0
    if not args.site_tasks:
        parser.error("give the sites' tasks (or --summarise FILE)")
    site_tasks = comma_list(args.site_tasks)
    shared = f"{args.shared} data.num-sites={len(site_tasks)}".strip()
    seed = next((part.split("=")[1] for part in shared.split() if part.startswith("run.seed=")), "0")
    variants = {"multi-task": f"multitask.site-tasks='{','.join(site_tasks)}'"}
    if args.unshared:
        variants["multi-task, nothing shared"] = variants["multi-task"] + " multitask.shared=false"
    if not args.no_alone:
        for task in sorted(set(site_tasks) - {SITS_OUT}):
            variants[f"{task} alone"] = f"multitask.site-tasks='{alone(site_tasks, task)}'"
    rows = []
    try:
        for label, overrides in variants.items():
            rows += rows_of(label, run(label, f"{shared} {overrides}", args.port), seed)
    except RuntimeError as err:
        print(err, file=sys.stderr)
        return 1
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as out:
            out.writelines(json.dumps({"shared": shared, **row}) + "\n" for row in rows)
    print(f"\nShared overrides: {shared}")
    print("| variant | task | test macro-F1 / Dice | test accuracy / IoU | task adapter bytes | bytes up (run) | wall s (run) |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        first = row.get("macro-f1", row.get("dice", float("nan")))
        second = row.get("accuracy", row.get("iou", float("nan")))
        print(f"| {row['variant']} | {row['task']} | {first:.3f} | {second:.3f} | {row['task-adapter-bytes']:,} | "
              f"{row['bytes-up']:,} | {row['wall-seconds']:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
