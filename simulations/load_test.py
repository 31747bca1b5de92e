"""Load and fault test of a deployed federation on 127.0.0.1: real ``omnirad-server`` and
``omnirad-client`` processes (TLS, site authentication, the fleet gate, feature cache, DP-SGD at
every site), with sites killed in the middle of local training and restarted, and the server
killed and resumed. It reports what docs/reliability.md tabulates: rounds completed and accounted
for in ``sites-per-round``, the checkpoint, each site's epsilon round by round (it must never go
down, and a restarted site must go on from its account), bytes, round latency percentiles and
peak resident memory of the server and of the largest site.

    python -m omnirad_fl.simulations.load_test /tmp/load --sites 20 --rounds 30 --kill-every 3 \\
        --server-restarts 15

A benchmark, not a test: its numbers depend on the machine. ``tests/test_e2e_deployment.py`` runs
a short version (2 sites, 2 rounds, the server killed and resumed; it must end as the same run
uninterrupted) and kills sites in its TLS test.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from omnirad.logs import show_progress
from omnirad.protocol import EPSILON
from omnirad_fl.simulations.local_federation import LocalFederation, wait_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadPlan:
    """``sites`` sites for ``rounds`` rounds; every ``kill_every`` rounds (0: never) the next site
    in turn is killed while it runs a ClientApp and restarted ``down_seconds`` later; the server is
    killed and resumed after each round in ``server_restarts``. ``sample``: the share of sites each
    round trains and scores (Flower's ``fraction-train``/``-evaluate``), which bounds how many
    ClientApp processes (about 1 GiB each with PyTorch, without the site runtime) run at once."""

    sites: int = 20
    rounds: int = 30
    kill_every: int = 3
    down_seconds: float = 5.0
    server_restarts: tuple[int, ...] = (15,)
    num_train: int = 2000
    round_timeout: float = 600.0
    sample: float = 1.0
    runtime: bool = True  # each site answers through its site runtime (False: a fresh process per message)
    adapter: str = "mlp"  # what the sites train on the frozen encoder (model.adapter)


@dataclass
class LoadReport:
    plan: dict[str, Any]
    faults: list[str] = field(default_factory=list)
    rounds_completed: int = 0
    rounds_accounted: int = 0
    checkpoint_round: int = 0
    last_resumed_after: int = 0  # the round after which the server last resumed (summary.json)
    epsilon_monotone: bool = True  # each site's epsilon grew with every round it trained, across restarts
    epsilon_by_site: dict[str, list[float]] = field(default_factory=dict)
    site_rounds_trained: int = 0
    failures: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    round_seconds: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    wall_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        rounds = int(self.plan["rounds"])
        return self.rounds_completed == rounds == self.rounds_accounted == self.checkpoint_round and self.epsilon_monotone


class MemoryWatch:
    """Samples the federation's resident memory every ``every`` seconds on a thread; keeps the peaks."""

    def __init__(self, fed: LocalFederation, every: float = 1.0) -> None:
        self.fed, self.every = fed, every
        self.server, self.site = 0.0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            sizes = self.fed.rss_mb()
            self.server = max(self.server, sizes.get("server", 0.0))
            self.site = max([self.site, *(v for k, v in sizes.items() if k.startswith("site-"))])

    def __enter__(self) -> MemoryWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def load_federation(folder: Path, plan: LoadPlan) -> LocalFederation:
    """The federation ``plan`` runs, laid out in ``folder`` (keys, certificates, site files) and not
    started: a test runs the same configuration uninterrupted beside it."""
    names = [f"S{i:02d}" for i in range(plan.sites)]
    return LocalFederation(folder, names, plan.rounds, num_train=plan.num_train, runtime=plan.runtime, **{
        # a budget that never binds: what is measured is the account's continuity, not its limit
        "privacy.dp": "true", "privacy.noise_multiplier": 2.0, "privacy.epsilon": 1000.0,
        "strategy.min_sites": max(1, plan.sites - 1), "strategy.round_timeout": plan.round_timeout,
        "strategy.fraction_train": plan.sample, "strategy.fraction_evaluate": plan.sample,
        "model.head_init": "'random'", "model.adapter": plan.adapter})


def run_load(folder: Path, plan: LoadPlan) -> LoadReport:
    """Run ``plan`` in ``folder`` and report; every process is stopped, whatever happens."""
    return run_federation(load_federation(folder, plan), plan)


def run_federation(fed: LocalFederation, plan: LoadPlan) -> LoadReport:
    """Run ``plan`` on ``fed`` (from ``load_federation``) and report; every process is stopped."""
    report = LoadReport(plan=asdict(plan))
    started = time.monotonic()
    try:
        with MemoryWatch(fed) as memory:
            drive(fed, plan, fed.sites, report)
        report.peak_rss_mb = {"server": round(memory.server, 1), "largest site": round(memory.site, 1)}
    finally:
        fed.stop_all()
    report.wall_seconds = round(time.monotonic() - started, 1)
    read_run_folder(fed, report)
    leftovers = fed.leftovers()
    if leftovers:
        raise RuntimeError(f"processes still alive after the load test: {leftovers}")
    return report


def drive(fed: LocalFederation, plan: LoadPlan, names: list[str], report: LoadReport) -> None:
    """Start everything, inject the plan's faults at their rounds, wait for the run to end."""
    fed.start_server()
    for name in names:
        fed.start_site(name)
    kills = [r for r in range(1, plan.rounds) if plan.kill_every and r % plan.kill_every == 0]
    restarts = sorted(r for r in plan.server_restarts if 0 < r < plan.rounds)
    victim = 0
    while fed.processes["server"].poll() is None:
        done = fed.rounds_done()
        if kills and done >= kills[0]:
            kills.pop(0)
            name = names[victim % len(names)]
            victim += 1
            kill_site_mid_training(fed, name, plan.down_seconds, report, done + 1)
        elif restarts and done >= restarts[0]:
            restarts.pop(0)
            fed.kill("server")
            report.faults.append(f"server killed after round {done} and resumed")
            log.info("load test: server killed after round %d; resuming", done)
            fed.start_server(resume=True)
        time.sleep(0.5)
    if fed.processes["server"].returncode != 0:
        raise RuntimeError(f"omnirad-server failed; see {fed.logs['server']}")


def kill_site_mid_training(fed: LocalFederation, name: str, down: float, report: LoadReport, server_round: int) -> None:
    """Kill site ``name`` while it runs a ClientApp (or after 120 s of waiting for one) and start it again."""
    try:
        wait_for(lambda: fed.running_clientapp(name), 120, f"site {name} to run a ClientApp", poll=0.1)
        when = "in the middle of a ClientApp"
    except TimeoutError:
        when = "between ClientApps"
    fed.kill(f"site-{name}")
    report.faults.append(f"site {name} killed {when} in round {server_round}, restarted {down:g} s later")
    log.info("load test: site %s killed %s in round %d", name, when, server_round)
    time.sleep(down)
    fed.start_site(name)


def read_run_folder(fed: LocalFederation, report: LoadReport) -> None:
    """Fill ``report`` from the run folder the server wrote."""
    folder = fed.run_folder()
    if folder is None or not (folder / "summary.json").exists():
        return
    summary = json.loads((folder / "summary.json").read_text())
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    report.rounds_completed = int(summary["rounds"])
    report.rounds_accounted = sum(1 for r in range(1, report.rounds_completed + 1) if str(r) in summary["sites-per-round"])
    report.checkpoint_round = fed.rounds_done()
    report.last_resumed_after = int(summary.get("resumed-after-round", 0))
    report.failures = len(summary.get("failures", []))
    report.site_rounds_trained = sum(len(sites) for sites in summary["sites-per-round"].values())
    epsilons: dict[str, list[float]] = {}
    for line in sorted((line for line in lines if line.get("round", 0) >= 1), key=lambda line: line["round"]):
        for site, entry in line.get("sites", {}).items():
            if EPSILON in entry.get("train", {}):
                epsilons.setdefault(site, []).append(float(entry["train"][EPSILON]))
    report.epsilon_monotone = all(bool(np.all(np.diff(values) > 0)) for values in epsilons.values())
    report.epsilon_by_site = {site: [round(v, 3) for v in values] for site, values in sorted(epsilons.items())}
    report.bytes_up = int(sum(line.get("bytes-up", 0) for line in lines))
    report.bytes_down = int(sum(line.get("bytes-down", 0) for line in lines))
    seconds = [float(line["seconds"]) for line in lines if line.get("round", 0) >= 1 and "seconds" in line]
    if seconds:
        report.round_seconds = {f"p{q}": round(float(np.percentile(seconds, q)), 1) for q in (50, 90, 100)}


def main(argv: Sequence[str] | None = None) -> int:
    show_progress()
    parser = argparse.ArgumentParser(prog="python -m omnirad_fl.simulations.load_test", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="an empty folder for the federation's files and the report")
    parser.add_argument("--sites", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--kill-every", type=int, default=3, help="kill a site every this many rounds (0: never)")
    parser.add_argument("--server-restarts", type=int, nargs="*", default=[15], metavar="ROUND",
                        help="kill and resume the server after these rounds")
    parser.add_argument("--num-train", type=int, default=2000, help="images shared out among the sites")
    parser.add_argument("--sample", type=float, default=0.5,
                        help="share of the sites each round trains and scores (default: 0.5; each ClientApp "
                             "takes about 1 GiB)")
    parser.add_argument("--adapter", default="mlp", help="model.adapter the sites train (default: mlp)")
    parser.add_argument("--no-runtime", action="store_true",
                        help="sites without their site runtime: a fresh ClientApp process per message (for comparison)")
    args = parser.parse_args(argv)
    if args.folder.exists() and any(args.folder.iterdir()):
        parser.error(f"{args.folder}: not empty; the load test lays out a new federation there")
    plan = LoadPlan(sites=args.sites, rounds=args.rounds, kill_every=args.kill_every,
                    server_restarts=tuple(args.server_restarts), num_train=args.num_train, sample=args.sample,
                    runtime=not args.no_runtime, adapter=args.adapter)
    report = run_load(args.folder, plan)
    out = args.folder / "load-test.json"
    out.write_text(json.dumps({**asdict(report), "ok": report.ok}, indent=1))
    print(json.dumps({**asdict(report), "ok": report.ok}, indent=1))
    print(f"wrote {out}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
