"""A multi-task federation against each task's federation alone, on the same sites and split.

Runs ``flwr run .`` once with every site's task (``multitask.site-tasks``), then once per task
with the other sites sitting out (``-``): the same images per site, the same seeds. With
``--unshared`` also the multi-task run with ``multitask.shared=false`` (tensors common to every
task, such as LoRA on the encoder, averaged within each task only). Prints a table per task and
appends one JSON line per run and task to ``--out``:

    python -m simulations.multitask_compare region,region,region,lesions,lesions,lesions \\
        --shared "data.size=48 num-server-rounds=10" --out docs/results/multitask.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from omnirad.config import SITS_OUT, comma_list
from simulations.demo import run_simulation
from simulations.flower_local import DEFAULT_HTTP_PORT


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
        rows.append({"variant": label, "task": task, "seed": seed, **final,
                     "task-adapter-bytes": summary["task-adapter-bytes"][task], "bytes-up": summary["bytes-up"],
                     "bytes-down": summary["bytes-down"], "wall-seconds": summary["wall-seconds"],
                     "run-folder": summary["run-folder"]})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulations.multitask_compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("site_tasks", help="one task per site, comma-separated (region, finding, lesions)")
    parser.add_argument("--shared", default="", help="overrides for every run, as for make demo")
    parser.add_argument("--unshared", action="store_true", help="also the multi-task run with multitask.shared=false")
    parser.add_argument("--no-alone", action="store_true", help="skip the single-task federations")
    parser.add_argument("--out", type=Path, help="append the rows to this JSONL file")
    parser.add_argument("--port", type=int, default=DEFAULT_HTTP_PORT, help="the local SuperLink's HTTP port")
    args = parser.parse_args(argv)
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
