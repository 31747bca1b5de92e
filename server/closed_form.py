"""The closed-form phase (``model.head-init``): before round 1 the server asks every site for
the sums its head needs, adds them exactly, solves, chooses the softmax temperature on the pooled
validation loss, and scores the result as round 0 of the run, like any later round.

Two queries, each one message per site: ``query.head_statistics`` (sums; with DP noised at the
site) and ``query.logit_scale`` (the head's summed loss on the site's validation split at a few logit scales; skipped
under DP, where a data-free scale is used instead, so that nothing but the noised sums leaves).
Under ``privacy.secure-sum`` each is a secure sum instead (``server/secure_sum.py``, two messages
per site): the server learns the totals only, and checks them naming the phase, never a site.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from torch import nn

from omnirad.adapters import trainable_state
from omnirad.broadcast import Broadcast
from omnirad.closed_form import (
    HEAD_INITS,
    ROOT_UPPER,
    SCALES,
    SECURE_SUM_SCALE,
    SECURE_SUM_STATISTICS,
    HeadStatistics,
    closed_form_head,
    statistics_sensitivity,
)
from omnirad.config import Config
from omnirad.data.sites import task_info
from omnirad.models import new_model
from omnirad.multitask import SHARED, TaskGroup, global_record, group_view, task_config
from omnirad.privacy import statistics_noise
from omnirad.protocol import (
    ARRAYS,
    CONFIG,
    EPSILON,
    LOGIT_SCALES,
    METRICS,
    NUM_EXAMPLES,
    QUERY_HEAD_STATISTICS,
    QUERY_LOGIT_SCALE,
    SITE_ID,
    TASK,
)
from omnirad_fl.server.phases import PHASES, ServerRun
from omnirad_fl.server.run_folder import RunFolder
from omnirad_fl.server.secure_sum import SecureSum, secure_sum
from omnirad_fl.strategies.multitask import GroupGrid
from omnirad_fl.strategies.site_queries import ask_every_site

log = logging.getLogger(__name__)
REPORT_FILE = "closed-form.json"


def site_label(node: int, content: RecordDict) -> str:
    """``site N (node M)``: how the server names a site in errors, with what the site says it is."""
    metrics = content.get(METRICS)
    site = int(metrics[SITE_ID]) if metrics is not None and SITE_ID in metrics else None
    return f"site {site} (node {node})" if site is not None else f"node {node}"


@dataclass
class Gathered:
    """The sites' statistics added up, and what the run folder says of them: the bytes each site
    sent and in which precision (by site), under DP each site's epsilon after the release (by site
    id), and under ``privacy.secure-sum`` the finished secure sum (who is in it)."""

    stats: HeadStatistics
    sent: dict[str, int]
    precision: dict[str, str]
    epsilons: dict[str, float]
    secure: SecureSum | None = None


FLOAT32_ROOT, FLOAT64_GRAM = "float32 scatter root", "float64 Gram"  # closed-form.json's precisions


def pooled_statistics(grid: Grid, cfg: Config, model: nn.Module, instructions: ConfigRecord, *,
                      feature_width: int) -> tuple[HeadStatistics, dict[str, int], dict[str, float]]:
    """Every site's statistics, checked and added exactly in float64; the bytes each site sent, by
    site; and under DP each site's epsilon after the release, by site id. Raises ``RuntimeError``
    naming the site whose reply is missing or malformed (under ``privacy.secure-sum``: naming the
    phase when the sum fails its checks, ``secure_statistics``)."""
    gathered = gather_statistics(grid, cfg, model, instructions, feature_width=feature_width)
    return gathered.stats, gathered.sent, gathered.epsilons


def gather_statistics(grid: Grid, cfg: Config, model: nn.Module, instructions: ConfigRecord, *,
                      feature_width: int) -> Gathered:
    """``pooled_statistics``, with each site's precision and the secure sum (``Gathered``)."""
    spec = HEAD_INITS[cfg.model.head_init]
    if spec is None:
        raise ValueError("model.head-init=random: no statistics to ask for")
    head, task = closed_form_head(model), task_info(cfg.data)
    with torch.no_grad():
        dim = head.closed_form_inputs(torch.zeros(1, feature_width)).shape[1]
    if cfg.privacy.secure_sum:
        return secure_statistics(grid, cfg, instructions, dim=dim)
    replies = ask_every_site(grid, QUERY_HEAD_STATISTICS, "closed-form head",
                             content=RecordDict({CONFIG: instructions}))
    pooled, sent, precision, epsilons = None, {}, {}, {}
    for node, content in replies.items():
        who = site_label(node, content)
        arrays = content.get(ARRAYS)
        try:
            if arrays is None or METRICS not in content:
                raise ValueError("the reply holds no statistics")
            stats = HeadStatistics.from_arrays(
                {k: torch.from_numpy(v.numpy()) for k, v in arrays.items()}, source=who, dim=dim,
                num_classes=task.num_outputs, with_gram=spec.with_gram,
                num_examples=float(content[METRICS][NUM_EXAMPLES]), single_label=not task.multi_label,
                noisy=cfg.privacy.dp)
        except ValueError as err:
            raise RuntimeError(f"closed-form head: {who}: {err}") from err
        site = who.split(" (node")[0]
        sent[site] = arrays.count_bytes()
        if spec.with_gram:
            precision[site] = FLOAT32_ROOT if ROOT_UPPER in arrays else FLOAT64_GRAM
        if EPSILON in content[METRICS] and SITE_ID in content[METRICS]:
            epsilons[str(int(content[METRICS][SITE_ID]))] = float(content[METRICS][EPSILON])
        pooled = stats if pooled is None else pooled + stats
    if pooled is None:
        raise RuntimeError("closed-form head: no site is connected")
    return Gathered(pooled, sent, precision, epsilons)


def metrics_label(node: int, metrics: dict[str, float]) -> str:
    """``site N``, as the site names itself, or ``node M``."""
    return f"site {int(metrics[SITE_ID])}" if SITE_ID in metrics else f"node {node}"


def secure_statistics(grid: Grid, cfg: Config, instructions: ConfigRecord, *, dim: int) -> Gathered:
    """``privacy.secure-sum``: the statistics' total over the sites, which alone the server learns.
    Each site checked its own sums before masking; the server checks the total (whole and matching
    counts, a positive semi-definite Gram matrix) and names the phase when it fails, never a site."""
    spec, task = HEAD_INITS[cfg.model.head_init], task_info(cfg.data)
    assert spec is not None  # checked by the caller
    result = secure_sum(grid, sorted(grid.get_node_ids()), SECURE_SUM_STATISTICS, "closed-form head",
                        RecordDict({CONFIG: instructions}), timeout=cfg.strategy.round_timeout)
    try:
        stats = HeadStatistics.from_sum_blocks(result.sums, source="the secure sum", dim=dim,
                                               num_classes=task.num_outputs, with_gram=spec.with_gram,
                                               single_label=not task.multi_label, noisy=cfg.privacy.dp)
    except ValueError as err:
        raise RuntimeError(f"closed-form head: the secure sum fails its checks: {err}") from err
    labels = {node: metrics_label(node, result.metrics[node]) for node in result.participants}
    sent = {labels[node]: result.bytes_per_site[node] for node in result.participants}
    epsilons = {labels[node].removeprefix("site "): float(result.metrics[node][EPSILON])
                for node in result.participants if EPSILON in result.metrics[node] and SITE_ID in result.metrics[node]}
    # masked fixed-point words of the float64 Gram matrix's upper triangle, exact in the sum
    precision = {labels[node]: FLOAT64_GRAM for node in result.participants} if spec.with_gram else {}
    return Gathered(stats, sent, precision, epsilons, result)


def pooled_scale(grid: Grid, state: dict[str, torch.Tensor], instructions: ConfigRecord, *,
                 secure: SecureSum | None = None, timeout: float = 600.0) -> tuple[float, list[float]]:
    """The logit scale with the lowest validation loss summed over every site, and those sums: the
    temperature that calibrates the head's probabilities on held-out images (temperature scaling).
    ``secure``: the statistics' secure sum; the losses are summed securely too, over its sites."""
    config = ConfigRecord({**instructions, LOGIT_SCALES: list(SCALES)})
    if secure is not None:
        result = secure_sum(grid, secure.participants, SECURE_SUM_SCALE, "closed-form head temperature",
                            RecordDict({ARRAYS: ArrayRecord(state), CONFIG: config}), timeout=timeout)
        summed = torch.from_numpy(result.sums["losses"]).double()
        if summed.shape != (len(SCALES),) or not torch.isfinite(summed).all() or (summed < 0).any():
            raise RuntimeError(f"closed-form head temperature: the secure sum fails its checks: losses of shape "
                               f"{tuple(summed.shape)}, expected ({len(SCALES)},) finite and non-negative")
        return SCALES[int(summed.argmin())], summed.tolist()
    replies = ask_every_site(grid, QUERY_LOGIT_SCALE, "closed-form head temperature",
                             content=RecordDict({ARRAYS: ArrayRecord(state), CONFIG: config}))
    total = torch.zeros(len(SCALES), dtype=torch.float64)
    for node, content in replies.items():
        losses = torch.from_numpy(content[ARRAYS]["losses"].numpy()).double()
        if losses.shape != total.shape or not torch.isfinite(losses).all():
            raise RuntimeError(f"closed-form head temperature: {site_label(node, content)} sent losses of shape "
                               f"{tuple(losses.shape)}, expected ({len(SCALES)},) finite")
        total += losses
    return SCALES[int(total.argmin())], total.tolist()


def solve_head(grid: Grid, cfg: Config, model: nn.Module, instructions: ConfigRecord, *,
               feature_width: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Set the closed-form solution from the sites on ``grid`` on ``model``; returns its tensors
    and the report (what ``closed-form.json`` keeps). ``feature_width``: the encoder's feature size."""
    started = time.perf_counter()
    spec = HEAD_INITS[cfg.model.head_init]
    if spec is None:
        raise ValueError("model.head-init=random: nothing to solve")
    gathered = gather_statistics(grid, cfg, model, instructions, feature_width=feature_width)
    stats, sent, epsilons, secure = gathered.stats, gathered.sent, gathered.epsilons, gathered.secure
    model_keys = cfg.model
    if cfg.privacy.dp and spec.with_gram:
        floor = noise_floor(cfg, num_sites=len(sent), dim=stats.feature_sum.numel())
        model_keys = dataclasses.replace(cfg.model, ridge_lambda=cfg.model.ridge_lambda + floor)
        log.info("DP statistics: ridge penalty %g + %.3g for the noise in the Gram matrix", cfg.model.ridge_lambda, floor)
    weight, bias = spec.solve(stats, model_keys)
    head = closed_form_head(model)
    head.set_closed_form(weight.float(), bias.float(), 1.0)
    losses: list[float] = []
    if cfg.privacy.dp:
        scale = spec.default_scale(task_info(cfg.data).num_outputs)
    else:
        scale, losses = pooled_scale(grid, trainable_state(model), instructions, secure=secure,
                                     timeout=cfg.strategy.round_timeout)
    head.set_closed_form(weight.float(), bias.float(), scale)
    log.info("Closed-form %s head from %d sites' sums (%.0f examples, %.0f KiB per site), logit scale %g",
             cfg.model.head_init, len(sent), float(stats.num_samples), sum(sent.values()) / 1024 / max(1, len(sent)),
             scale)
    return dict(trainable_state(model)), {
        "head-init": cfg.model.head_init, "adapter": cfg.model.adapter, "head-inputs": stats.feature_sum.numel(),
        "examples": float(stats.num_samples),
        "statistics-bytes-per-site": dict(sorted(sent.items(), key=lambda item: item[0])),
        **({"statistics-precision-per-site": dict(sorted(gathered.precision.items()))} if gathered.precision else {}),
        "logit-scale": scale,
        "logit-scales": list(SCALES) if losses else [], "pooled-validation-loss": losses,
        **({"epsilon-per-site": epsilons} if epsilons else {}), **secure_report(secure),
        "seconds": round(time.perf_counter() - started, 3)}


def secure_report(secure: SecureSum | None) -> dict[str, Any]:
    """closed-form.json's record of a secure sum: who is in it and what a dropout cost."""
    if secure is None:
        return {}
    return {"secure-sum": {"sites": len(secure.participants), "restarts": secure.restarts,
                           "dropped-nodes": secure.dropped}}


def closed_form_phase(grid: Grid, cfg: Config, model: nn.Module, instructions: ConfigRecord, folder: RunFolder, *,
                      feature_width: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Set the closed-form solution on ``model``; returns its tensors (what round 1 starts from)
    and summary.json's entries."""
    state, report = solve_head(grid, cfg, model, instructions, feature_width=feature_width)
    keep_reports(folder, report, [report])
    # under DP the release's epsilon is the run's when no training round follows (training replies
    # report the sites' cumulative epsilon, which supersedes it in summary.json)
    privacy = {"epsilon-per-site": report["epsilon-per-site"]} if "epsilon-per-site" in report else {}
    return state, {"closed-form": summary_entry(report), **privacy}


def closed_form_tasks(grid: Grid, cfg: Config, groups: dict[str, TaskGroup], record: dict[str, torch.Tensor],
                      instructions: ConfigRecord, folder: RunFolder, *, broadcast: Broadcast,
                      feature_width: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A multi-task run: each classification group's head solved from its own sites' sums (only the
    group's sites are asked, with the group's task named, as in every round). Segmentation groups
    keep their initial decoder. Returns the global record and summary.json's entries."""
    shared = frozenset(key.partition("/")[2] for key in record if key.startswith(f"{SHARED}/"))
    states, reports = {name: group_view(record, name) for name in groups}, {}
    for name, group in groups.items():
        task_cfg = task_config(cfg, name, group.spec)
        if HEAD_INITS[task_cfg.model.head_init] is None:
            log.info("task %s (%s): no closed-form head, its adapter starts from its initialisation", name, group.spec.kind)
            continue
        model = broadcast.apply(new_model(task_cfg))
        model.load_state_dict(states[name], strict=False)  # the shared tensors, as every round sends them
        states[name], reports[name] = solve_head(GroupGrid(grid, group.nodes), task_cfg, model,
                                                 ConfigRecord({**instructions, TASK: name}), feature_width=feature_width)
    keep_reports(folder, reports, list(reports.values()))
    return global_record(states, shared), {"closed-form": {name: summary_entry(r) for name, r in reports.items()}}


def summary_entry(report: dict[str, Any]) -> dict[str, Any]:
    return {key: report[key] for key in ("head-init", "logit-scale", "statistics-bytes-per-site")}


def keep_reports(folder: RunFolder, content: dict[str, Any], reports: list[dict[str, Any]]) -> None:
    """Write ``content`` as ``closed-form.json`` (one report, or one per task) and count the
    statistics' bytes as round 0's upload."""
    (folder.path / REPORT_FILE).write_text(json.dumps(content, indent=1))
    folder.current.bytes_up += sum(sum(r["statistics-bytes-per-site"].values()) for r in reports)


def noise_floor(cfg: Config, *, num_sites: int, dim: int) -> float:
    """The spectral norm the DP noise in a sum of ``num_sites`` noised Gram matrices reaches, about
    2 sigma sqrt(num_sites dim) for a symmetric Gaussian matrix with entries of standard deviation
    sigma: a ridge penalty this large keeps the noised system positive definite, where the plain
    penalty would let the noise's negative eigenvalues through."""
    sigma = statistics_noise(cfg) * statistics_sensitivity(cfg.privacy.max_feature_norm, with_gram=True)
    noised = 1 if cfg.privacy.distributed_noise else num_sites  # distributed: the sites' shares make one sigma
    return 2.0 * sigma * math.sqrt(noised * dim)


def evaluate_round_zero(grid: Grid, strategy: Strategy, state: dict[str, torch.Tensor], instructions: ConfigRecord,
                        timeout: float) -> None:
    """Every site scores the closed-form head on its validation split, as after any round; the
    strategy's observer (the run folder) records it as round 0."""
    messages = list(strategy.configure_evaluate(0, ArrayRecord(state), instructions, grid))
    strategy.aggregate_evaluate(0, list(grid.send_and_receive(messages, timeout=timeout)))


def wants_closed_form(run: ServerRun) -> bool:
    """A closed-form head is configured and the run starts now (a resumed run has its checkpoint)."""
    return HEAD_INITS[run.cfg.model.head_init] is not None and run.checkpoint is None


@PHASES.register("closed-form", "initialise", applies=wants_closed_form)
def closed_form(run: ServerRun) -> None:
    """Round 1 starts from the solved head (each task group's, in a multi-task run), scored as round 0."""
    folder, width = run.need_folder(), run.need_encoder().num_features
    instructions = ConfigRecord(run.instructions)
    entries: dict[str, Any] = {}
    if run.groups is not None:
        run.initial, entries = closed_form_tasks(run.grid, run.cfg, run.groups, run.initial, instructions, folder,
                                                 broadcast=run.broadcast, feature_width=width)
    elif run.model is not None:
        solved, entries = closed_form_phase(run.grid, run.cfg, run.broadcast.apply(run.model), instructions, folder,
                                            feature_width=width)
        run.initial = {k: v for k, v in solved.items() if k not in run.kept}
    run.summary.update(entries)
    evaluate_round_zero(run.grid, run.need_strategy(), run.initial, instructions, run.cfg.strategy.round_timeout)
    assert run.round_end is not None  # built with the strategy
    run.round_end.record(0, run.initial)
