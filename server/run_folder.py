"""The run folder: what a federated run leaves behind for people, reports, tests and benchmarks.

    <run.output-dir>/<timestamp>-<name>/
        config.yaml               the resolved configuration (flat keys)
        encoder.json              the encoder and the SHA-256 of its weights, which omnirad-predict checks
        run.json                  the run's key, which names each site's state file for it (kept on resume)
        site-state/site-<id>/     simulation: each site's state for the run (privacy account, own layers)
        checkpoint.json, checkpoint-round-N.safetensors, strategy-state-round-N.safetensors   the last round, to resume from
        metrics.jsonl             one line per round: global test metrics, federated validation,
                                  per-site metrics, bytes up and down, seconds
        summary.json              final and best metrics, totals, peak memory
        final_adapter.safetensors best_adapter.safetensors   adapter checkpoints
        feature-standardisation.safetensors   model.standardise-features: the mean and std the heads read with
        vocabulary.txt            a federated caption vocabulary, one word a line (config.yaml names it)
        partition.json, .png      each site's sample count and label histogram
        curves.png                metrics per round
        tracking.json, tensorboard/   run.tracking: the tracker's run (MLflow's store is beside the folder,
                                  <run.output-dir>/mlflow.db); the same numbers as metrics.jsonl
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from flwr.app import Message, MetricRecord
from safetensors.torch import save_file

from omnirad.captions import write_vocabulary
from omnirad.config import Config, to_flat, to_yaml
from omnirad.configure import load_config
from omnirad.data.report import format_report, plot_report
from omnirad.data.sites import task_info
from omnirad.metrics import peak_rss_mb
from omnirad.protocol import ARRAYS, EPSILON, METRICS, NUM_EXAMPLES, PEAK_RSS_MB, SITE_ID, SITE_INFO
from omnirad.run_files import ENCODER_FILE, STANDARDISATION_FILE, encoder_record
from omnirad.standardise import Standardisation
from omnirad.tasks import TaskSpec
from omnirad.tracking import Tracker, open_tracker, round_scalars
from omnirad_fl.server.checkpoint import check_same_run
from omnirad_fl.server.plots import plot_curves

log = logging.getLogger(__name__)


@dataclass
class RoundRecord:
    """Everything observed during one round, filled in as messages come and go."""

    server_round: int
    started: float = field(default_factory=time.perf_counter)
    bytes_down: int = 0
    bytes_up: int = 0
    sites: dict[int, dict[str, Any]] = field(default_factory=lambda: defaultdict(dict))
    failures: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    aggregated: dict[str, dict[str, float]] = field(default_factory=dict)


VOCABULARY_FILE = "vocabulary.txt"
RUN_FILE = "run.json"


def _metrics(record: MetricRecord | None) -> dict[str, float]:
    return {key: float(value) for key, value in (record or {}).items()}


class RunFolder:
    """Creates the run folder and implements ``strategies.RoundObserver`` to fill it."""

    def __init__(self, cfg: Config, path: Path, tracker: Tracker | None = None) -> None:
        self.cfg = cfg
        task: TaskSpec = task_info(cfg.data)
        self.headline_metrics, self.selection_metric = task.headline_metrics, task.selection_metric
        self.task_members: dict[str, list[int]] = {}  # a multi-task run: each task's sites
        self.path = path
        self.started = time.perf_counter()
        self.rounds: list[dict[str, Any]] = []
        self.current = RoundRecord(0)
        self.client_peak_rss_mb = 0.0
        self.site_of_node: dict[int, int] = {}  # Flower node id -> site, learnt from replies, to name failures
        self.node_of_message: dict[str, int] = {}  # instruction id -> destination: the SuperLink answers for lost nodes
        self.run_key = run_key(path)
        self.tracker = tracker  # run.tracking: every round's line goes there too

    @classmethod
    def create(cls, cfg: Config, vocabulary: tuple[str, ...] = ()) -> RunFolder:
        """A new folder; with a federated ``vocabulary``, kept there and named by the folder's
        configuration (``data.vocabulary``), which then reruns the run with the same word ids."""
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        personal = "" if cfg.personalization.mode == "none" else f"-{cfg.personalization.mode}"
        name = cfg.run.name or f"{cfg.data.dataset}-{cfg.model.encoder}-{cfg.model.adapter}-{cfg.strategy.name}{personal}"
        base = Path(cfg.run.output_dir).expanduser().resolve()
        path = base / f"{stamp}-{name}"
        suffix = 1
        while path.exists():
            suffix += 1
            path = base / f"{stamp}-{name}-{suffix}"
        path.mkdir(parents=True)
        if vocabulary:
            write_vocabulary(vocabulary, path / VOCABULARY_FILE)
            cfg = load_config({**to_flat(cfg), "data.vocabulary": str(path / VOCABULARY_FILE)})
        (path / "config.yaml").write_text(to_yaml(cfg))
        (path / ENCODER_FILE).write_text(json.dumps(encoder_record(cfg.model), indent=2))
        return cls(cfg, path, open_tracker(cfg, path))

    @classmethod
    def reopen(cls, cfg: Config, path: Path, done_rounds: int) -> RunFolder:
        """A stopped run's folder, to go on with: its configuration must be the one it ran with
        (beyond the keys a resumed run may change: ``checkpoint.check_same_run``), and rounds after
        the last checkpoint are dropped from ``metrics.jsonl`` (they will run again)."""
        check_same_run(path, cfg)
        folder = cls(cfg, path, open_tracker(cfg, path, after_step=done_rounds))
        metrics = path / "metrics.jsonl"
        lines = [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.exists() else []
        folder.rounds = [line for line in lines if line["round"] <= done_rounds]
        metrics.write_text("".join(json.dumps(line) + "\n" for line in folder.rounds))
        (path / "config.yaml").write_text(to_yaml(cfg))
        return folder

    def track_tasks(self, selection: dict[str, str], score: str, members: dict[str, list[int]]) -> None:
        """A multi-task run: print and plot each task's selection metric (``<task>/<metric>``), pick
        the best round by ``score``, and name each task's worst site among its ``members``."""
        self.headline_metrics = tuple(f"{task}/{metric}" for task, metric in selection.items())
        self.selection_metric, self.task_members = score, members

    def save_best(self, state: dict[str, torch.Tensor]) -> None:
        """The adapter of the best round so far (by federated validation), kept as it happens."""
        save_file({k: v.contiguous() for k, v in state.items()}, self.path / "best_adapter.safetensors")

    def write_standardisation(self, standardisation: Standardisation) -> None:
        """The pooled feature statistics: with them, and only with them, the saved heads can be used."""
        save_file(standardisation.to_arrays(), self.path / STANDARDISATION_FILE)

    def write_partition(self, report: dict[str, Any]) -> None:
        """Print who holds what and keep it as partition.json and partition.png."""
        log.info("Sites and their labels:\n%s", format_report(report))
        (self.path / "partition.json").write_text(json.dumps(report, indent=1))
        d = self.cfg.data
        plot_report(report, self.path / "partition.png", f"{d.dataset}: {d.partition} split, {d.num_sites} sites")

    # --- RoundObserver -------------------------------------------------------------------------
    def on_sent(self, server_round: int, phase: str, messages: list[Message]) -> None:
        if self.current.server_round != server_round:
            self.current = RoundRecord(server_round)
        self.current.bytes_down += sum(m.content[ARRAYS].count_bytes() for m in messages)
        # Flower sets an instruction's message id to its object id when it pushes it (grid.push_messages)
        self.node_of_message = {m.object_id: m.metadata.dst_node_id for m in messages}

    def on_replies(self, server_round: int, phase: str, replies: list[Message]) -> None:
        for reply in replies:
            node = self.node_of_message.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
            if reply.has_error():
                who = f"site {self.site_of_node[node]} (node {node})" if node in self.site_of_node else f"node {node}"
                self.current.failures.append(f"{phase}: {who}: {reply.error.reason}")
                continue
            metrics = _metrics(reply.content.get(METRICS))
            site = int(metrics.pop(SITE_ID, node))
            claimed = [other for other, s in self.site_of_node.items() if s == site and other != node]
            if claimed:  # deployed sites declare their number themselves
                self.current.failures.append(f"{phase}: nodes {claimed[0]} and {node} both say they are site {site}: "
                                             "give each site its own site.id")
            self.site_of_node[node] = site
            entry = self.current.sites[site]
            entry[phase] = metrics
            if SITE_INFO in reply.content:  # where the site computed: its own choice
                where = reply.content[SITE_INFO]
                entry["device"] = f"{where.get('device', '?')} {where.get('precision', '?')}"
            if phase == "train":
                entry["bytes-up"] = reply.content[ARRAYS].count_bytes()
                self.current.bytes_up += entry["bytes-up"]
                self.client_peak_rss_mb = max(self.client_peak_rss_mb, metrics.get(PEAK_RSS_MB, 0.0))

    def on_rejected(self, server_round: int, reply: Message, reason: str) -> None:
        """A training reply that validation left out of aggregation: kept with its reason."""
        site = int(_metrics(reply.content.get(METRICS)).get(SITE_ID, reply.metadata.src_node_id))
        self.current.sites[site]["rejected"] = reason
        self.current.rejected.append(f"site {site}: {reason}")

    def on_aggregated(self, server_round: int, phase: str, metrics: MetricRecord | None) -> None:
        self.current.aggregated[phase] = _metrics(metrics)

    def trained_rounds(self) -> dict[int, int]:
        """How many of the recorded rounds each site trained in (its training reply arrived): a site
        whose state store holds fewer has lost part of its privacy account."""
        counts = Counter(int(site) for line in self.rounds for site, entry in line["sites"].items() if "train" in entry)
        return dict(sorted(counts.items()))

    # --- end of round and of run ----------------------------------------------------------------
    def end_round(self, server_round: int, global_metrics: dict[str, float]) -> dict[str, Any]:
        """Append the round's line to metrics.jsonl and print it as a table row."""
        rec = self.current
        line = {
            "round": server_round,
            "seconds": round(time.perf_counter() - rec.started, 3),
            "global": global_metrics,
            "federated-val": rec.aggregated.get("evaluate", {}),
            "train": rec.aggregated.get("train", {}),
            "sites": {str(site): rec.sites[site] for site in sorted(rec.sites)},
            "bytes-up": rec.bytes_up,
            "bytes-down": rec.bytes_down,
            "failures": rec.failures,
            "rejected": rec.rejected,
        }
        self.rounds.append(line)
        with open(self.path / "metrics.jsonl", "a") as out:
            out.write(json.dumps(line) + "\n")
        if self.tracker is not None:
            self.tracker.log_round(server_round, round_scalars(line))
        print_round(line, header=len(self.rounds) == 1, metrics=self.headline_metrics)
        return line

    def finish(self, final_state: dict[str, torch.Tensor], extra: dict[str, Any]) -> dict[str, Any]:
        """Write summary.json, the final adapter and the curves plot."""
        save_file({k: v.contiguous() for k, v in final_state.items()}, self.path / "final_adapter.safetensors")
        summary = summarise(self.rounds, extra, self.selection_metric, self.task_members)
        summary["wall-seconds"] = round(time.perf_counter() - self.started, 3)
        summary["peak-rss-mb"] = {"server": round(peak_rss_mb(), 1), "clients": round(self.client_peak_rss_mb, 1)}
        (self.path / "summary.json").write_text(json.dumps(summary, indent=2))
        if self.rounds:
            plot_curves(self.rounds, self.path / "curves.png", self.headline_metrics)
        if self.tracker is not None:
            self.tracker.log_round(summary["rounds"], summary_scalars(summary))
            self.tracker.log_artifacts(self.path / name for name in ARTIFACTS if (self.path / name).is_file())
            self.tracker.close()
        return summary


ARTIFACTS = ("config.yaml", "summary.json", "curves.png", "partition.png", "cross-site.png")


def summary_scalars(summary: dict[str, Any]) -> dict[str, float]:
    """What the tracker keeps of summary.json: the shipped model's scores and round, the totals."""
    ship = summary.get("shipped") or {}
    scalars = {f"shipped/test/{k}": v for k, v in ship.get("global", {}).items()}
    scalars |= {f"shipped/federated-val/{k}": v for k, v in ship.get("federated-val", {}).items()}
    scalars |= {"shipped/round": ship.get("round"), "wall-seconds": summary.get("wall-seconds"),
                "total/bytes-up": summary.get("bytes-up"), "total/bytes-down": summary.get("bytes-down")}
    return {k: float(v) for k, v in scalars.items() if isinstance(v, int | float) and math.isfinite(v)}


def run_key(folder: Path) -> str:
    """The run's key (random, made with the folder, kept by a resumed run): sites name their state
    file for the run by it. A folder from before run keys gets one now."""
    path = folder / RUN_FILE
    if not path.exists():
        path.write_text(json.dumps({"run-key": secrets.token_hex(16)}))
    return str(json.loads(path.read_text())["run-key"])


def newest_summary(output_dir: Path, since: float) -> Path | None:
    """The summary.json of the one run folder written after ``since``, or None. Raises
    ``RuntimeError`` when several were: another run shares ``output_dir``, and taking the newest
    could hand this run's caller the other run's results."""
    summaries = sorted(p for p in output_dir.glob("*/summary.json") if p.stat().st_mtime >= since)
    if len(summaries) > 1:
        raise RuntimeError(f"{len(summaries)} runs finished in {output_dir} meanwhile "
                           f"({', '.join(p.parent.name for p in summaries)}): which one is this run's is unknown; "
                           "give concurrent runs their own run.output-dir")
    return summaries[0] if summaries else None


def best_round(rounds: list[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    """The round with the best federated-validation ``metric`` (never chosen on the test set)."""
    scored = [r for r in rounds if not math.isnan(r["federated-val"].get(metric, math.nan))]
    return max(scored, key=lambda r: r["federated-val"][metric]) if scored else None


def worst_site(line: dict[str, Any], task_members: dict[str, list[int]] | None = None) -> dict[str, float]:
    """Each validation metric's lowest value over the sites in one round (loss: highest); in a
    multi-task run over each task's sites, as ``<task>/<metric>``."""
    if not task_members:
        return worst_of([s["evaluate"] for s in line["sites"].values() if s.get("evaluate")])
    worst = {}
    for task, sites in task_members.items():
        found = [line["sites"][str(site)]["evaluate"] for site in sites if line["sites"].get(str(site), {}).get("evaluate")]
        worst.update({f"{task}/{name}": value for name, value in worst_of(found).items()})
    return worst


def worst_of(per_site: list[dict[str, float]]) -> dict[str, float]:
    """Each metric's worst value over sites' metric dicts: the lowest, or for ``loss`` the highest."""
    names = {name for metrics in per_site for name in metrics if name not in (NUM_EXAMPLES, SITE_ID)}
    pick = {name: max if name == "loss" else min for name in names}
    return {name: pick[name](m[name] for m in per_site if name in m) for name in sorted(names)}


def summarise(rounds: list[dict[str, Any]], extra: dict[str, Any], selection_metric: str,
              task_members: dict[str, list[int]] | None = None) -> dict[str, Any]:
    best = best_round(rounds, selection_metric)
    sites = sorted({site for r in rounds for site in r["sites"]}, key=int)
    up_per_site = [s["bytes-up"] for r in rounds for s in r["sites"].values() if "bytes-up" in s]
    return {
        **extra,
        "rounds": sum(1 for r in rounds if r["round"] > 0),  # round 0: a closed-form head, scored before round 1
        "final": rounds[-1]["global"] if rounds else {},
        "final-federated-val": rounds[-1]["federated-val"] if rounds else {},
        "final-worst-site": worst_site(rounds[-1], task_members) if rounds else {},
        "best": {"round": best["round"], "selected-by": f"federated-val {selection_metric}", "global": best["global"]}
        if best
        else None,
        "shipped": shipped(rounds, best, selection_metric),
        "bytes-up": sum(r["bytes-up"] for r in rounds),
        "bytes-down": sum(r["bytes-down"] for r in rounds),
        "bytes-up-per-site-round": (sum(up_per_site) / len(up_per_site)) if up_per_site else 0,
        "sites-per-round": {str(r["round"]): sorted((s for s, v in r["sites"].items() if "train" in v), key=int)
                            for r in rounds if r["round"] > 0},  # the sites whose training reply arrived
        "sites": sites,
        "failures": [f for r in rounds for f in r["failures"]],
        "rejected-updates": {str(r["round"]): r["rejected"] for r in rounds if r.get("rejected")},
        **({"epsilon-per-site": epsilons} if (epsilons := last_epsilon_per_site(rounds)) else {}),
        "devices": {site: s["device"] for r in rounds for site, s in sorted(r["sites"].items()) if "device" in s},
    }


def shipped(rounds: list[dict[str, Any]], best: dict[str, Any] | None, selection_metric: str) -> dict[str, Any]:
    """What the run ships, the adapter ``omnirad-predict`` and bundles take by default: the round
    best on federated validation (``best_adapter.safetensors``; never chosen on the test set), or
    the final round's adapter when no round was scored there. Its test and federated-validation
    metrics are the run's result."""
    if best is not None:
        return {"adapter": "best_adapter.safetensors", "round": best["round"],
                "selected-by": f"federated-val {selection_metric}", "global": best["global"],
                "federated-val": best["federated-val"]}
    last = rounds[-1] if rounds else {"round": 0, "global": {}, "federated-val": {}}
    return {"adapter": "final_adapter.safetensors", "round": last["round"], "selected-by": "final round",
            "global": last["global"], "federated-val": last["federated-val"]}


def shipped_scores(summary: dict[str, Any], metrics: tuple[str, ...]) -> str:
    """One line for people: the shipped adapter's round and its scores (on the test set, or on the
    sites' validation splits when the server has none), and the final round's beside them."""
    ship = summary["shipped"]
    final, where = (ship["global"], "test") if ship["global"] else (ship["federated-val"], "site validation")
    last = summary["final"] if ship["global"] else summary["final-federated-val"]
    scores = ", ".join(f"{name} {final.get(name, math.nan):.3f}" for name in metrics)
    line = f"ships round {ship['round']} ({ship['selected-by']}): {where} {scores}"
    if summary["rounds"] and ship["round"] != summary["rounds"]:
        line += f" (final round: {', '.join(f'{name} {last.get(name, math.nan):.3f}' for name in metrics)})"
    return line


def last_epsilon_per_site(rounds: list[dict[str, Any]]) -> dict[str, float]:
    """Under DP: each site's cumulative epsilon as it last reported it."""
    return {site: s["train"][EPSILON] for r in rounds for site, s in r["sites"].items() if EPSILON in s.get("train", {})}


def print_round(line: dict[str, Any], header: bool, metrics: tuple[str, ...]) -> None:
    """One table row per round, so progress is readable while the run goes on.

    Columns: the task's headline metrics on the test set, the first one on federated validation
    and on the worst site's validation split, then training loss, traffic and time.
    """
    g, v, first = line["global"], line["federated-val"], metrics[0]
    task, _, site_metric = first.rpartition("/")  # a multi-task run: the first task's, unprefixed at its sites
    train_loss = line["train"].get(f"{task}/train-loss" if task else "train-loss", math.nan)
    per_site = [s["evaluate"][site_metric] for s in line["sites"].values() if site_metric in s.get("evaluate", {})]
    worst = min(per_site) if per_site else math.nan
    if header:
        names = "".join(f" {'test ' + _short(m):>10}" for m in metrics)
        print(f"{'round':>5}{names} {'val ' + _short(first):>10} {'worst site':>10} "
              f"{'train loss':>10} {'up KiB':>8} {'down KiB':>8} {'sec':>6}", flush=True)
    values = "".join(f" {g.get(m, math.nan):>10.3f}" for m in metrics)
    print(f"{line['round']:>5}{values} {v.get(first, math.nan):>10.3f} {worst:>10.3f} "
          f"{train_loss:>10.4f} {line['bytes-up'] / 1024:>8.1f} "
          f"{line['bytes-down'] / 1024:>8.1f} {line['seconds']:>6.1f}", flush=True)


def _short(metric: str) -> str:
    task, _, metric = metric.rpartition("/")
    return (task[:5] + " " if task else "") + _short_name(metric)


def _short_name(metric: str) -> str:
    return {"accuracy": "acc", "macro-f1": "F1", "auc": "AUC", "dice-with-background": "Dice+bg"}.get(metric, metric)
