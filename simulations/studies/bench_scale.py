"""Scale benchmark: many simulated sites, a few sampled per round, on this machine.

    python simulations/studies/bench_scale.py                      # 100 sites, 10 per round, 10 rounds
    python simulations/studies/bench_scale.py --profile-site      # where one site's message spends its time

Prints the wall time, seconds per round (from the run folder), and the peak memory of the whole
process tree (SuperLink, simulation, Ray workers), sampled every 0.2 s. ``--profile-site`` runs
the ClientApp's train handler in this process under cProfile for sites it has not seen before,
as a Ray worker meets them, and prints the functions that take the most time.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import threading
import time
from pathlib import Path

import psutil
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict
from flwr.common.config import parse_config_args

from omnirad.adapters import trainable_state
from omnirad.configure import load_config
from omnirad.models import new_model
from omnirad_fl.simulations.demo import run_simulation
from omnirad_fl.simulations.flower_local import instruction

SCALE = ("data.num-sites=100 data.partition='iid' data.num-train=8000 data.num-test=400 "
         "strategy.fraction-train=0.1 strategy.fraction-evaluate=0.1 num-server-rounds=10 train.local-epochs=1 "
         "model.adapter='linear'")


class TreeMemory:
    """Peak resident memory of this process and all its descendants, sampled in a thread."""

    def __init__(self, period: float = 0.2) -> None:
        self.period, self.peak_mb, self._stop = period, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        root = psutil.Process(os.getpid())
        while not self._stop.is_set():
            total = 0
            for proc in [root, *root.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    pass
            self.peak_mb = max(self.peak_mb, total / 2**20)
            time.sleep(self.period)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_benchmark(overrides: str, port: int) -> dict:
    started = time.perf_counter()
    with TreeMemory() as memory:
        summary_path = run_simulation(overrides, port)
    wall = time.perf_counter() - started
    if summary_path is None:
        raise RuntimeError("the run did not finish")
    summary = json.loads(summary_path.read_text())
    rounds = [json.loads(x) for x in (summary_path.parent / "metrics.jsonl").read_text().splitlines()]
    seconds = [r["seconds"] for r in rounds]
    return {"wall-seconds": round(wall, 1), "run-seconds": summary["wall-seconds"],
            "seconds-per-round": [round(s, 2) for s in seconds],
            "mean-seconds-per-round": round(sum(seconds) / len(seconds), 2),
            "sites-per-round": len(next(iter(summary["sites-per-round"].values()))),
            "peak-tree-memory-mb": round(memory.peak_mb), "peak-rss-mb": summary["peak-rss-mb"],
            "final": summary["final"], "run-folder": str(summary_path.parent)}


def profile_sites(overrides: str, sites: list[int], top: int) -> None:
    """Each listed site's first train message, in this process, under cProfile."""
    from omnirad_fl.client.app import app  # imported here: only the profile needs the ClientApp

    flat = parse_config_args([overrides])
    cfg = load_config(flat)
    state = trainable_state(new_model(cfg))
    profiler = cProfile.Profile()
    started = time.perf_counter()
    for site in sites:
        context = Context(run_id=1, node_id=site, node_config={"partition-id": site, "num-partitions": cfg.data.num_sites},
                          state=RecordDict(), run_config=flat)
        content = RecordDict({"arrays": ArrayRecord(state), "config": ConfigRecord({"server-round": 1})})
        profiler.enable()
        app(instruction("train", content, site), context)
        profiler.disable()
    print(f"{len(sites)} sites' first train messages: {time.perf_counter() - started:.2f} s in all")
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(top)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--overrides", default=SCALE, help=f"the run (default: {SCALE})")
    parser.add_argument("--extra", default="", help="more overrides, e.g. model.feature-cache=true")
    parser.add_argument("--port", type=int, default=39291)
    parser.add_argument("--profile-site", action="store_true", help="profile sites' messages in this process instead")
    parser.add_argument("--out", type=Path, help="append the result (JSON line) to this file")
    args = parser.parse_args(argv)
    overrides = f"{args.overrides} {args.extra}".strip()
    if args.profile_site:
        profile_sites(overrides, list(range(10)), top=25)
        return 0
    result = {"overrides": overrides, **run_benchmark(overrides, args.port)}
    print(json.dumps(result, indent=2))
    if args.out:
        with args.out.open("a") as handle:
            handle.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
