"""The server's side of a multi-task federation: ask the sites what they train, form the groups,
build one adapter and one strategy per group, and score every group on its own test set."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from flwr.serverapp import Grid

from omnirad.adapters import tensor_bytes, trainable_state
from omnirad.config import Config, comma_list
from omnirad.data.sites import task_info
from omnirad.evaluation import CentralEvaluator
from omnirad.models import new_model
from omnirad.multitask import (
    TaskDeclaration,
    TaskGroup,
    global_record,
    group_sites,
    group_view,
    is_multitask,
    shared_names,
    task_config,
    task_report,
)
from omnirad.multitask_check import DECLARED, SITS_OUT
from omnirad.protocol import DECLARATION, QUERY_TASK
from omnirad.tasks import TaskSpec
from omnirad_fl.server.phases import PHASES, ServerRun
from omnirad_fl.server.round_end import RoundEnd
from omnirad_fl.server.run_folder import RunFolder
from omnirad_fl.server.vocabulary import group_vocabularies, vocabulary_instructions
from omnirad_fl.strategies.factory import build_strategy
from omnirad_fl.strategies.multitask import SCORE, MultiTaskStrategy, RejectedReplies, add_score
from omnirad_fl.strategies.site_queries import ask_every_site
from omnirad_fl.strategies.wrapper import OmniRadStrategy

log = logging.getLogger(__name__)
TASKS_FILE = "tasks.json"


def collect_declarations(grid: Grid, timeout: float = 600.0) -> dict[int, tuple[int, TaskDeclaration | None]]:
    """``{node: (site, declaration)}`` from one ``query.task`` message per connected site; raises
    ``RuntimeError`` naming the node when a site does not answer (the groups would be wrong)."""
    declared = {}
    for node, content in ask_every_site(grid, QUERY_TASK, "task groups", timeout).items():
        record = content[DECLARATION]
        found = TaskDeclaration.from_record(dict(record)) if "task" in record else None
        declared[node] = (int(record["site-id"]), found)
    return declared


def expected_tasks(cfg: Config) -> dict[str, TaskSpec] | None:
    """The tasks this run's configuration names, and what each one is; None in deployment, where
    the sites' declarations say."""
    if cfg.multitask.site_tasks == DECLARED:
        return None
    names = sorted({name for name in comma_list(cfg.multitask.site_tasks) if name != SITS_OUT})
    return {name: task_info(task_config(cfg, name).data) for name in names}


class MultiTaskEvaluator:
    """Each task's global adapter on that task's held-out test set; metrics named ``<task>/<metric>``."""

    def __init__(self, cfg: Config, groups: dict[str, TaskGroup]) -> None:
        self.evaluators = {name: CentralEvaluator(task_config(cfg, name, g.spec)) for name, g in groups.items()}
        self.selection = {name: task_info(e.cfg.data).selection_metric for name, e in self.evaluators.items()}

    def __call__(self, record: dict[str, torch.Tensor]) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for name, evaluator in self.evaluators.items():
            metrics.update({f"{name}/{k}": v for k, v in evaluator(group_view(record, name)).items()})
        add_score(metrics, self.selection)
        return metrics


def initial_record(cfg: Config, groups: dict[str, TaskGroup]) -> tuple[dict[str, torch.Tensor], frozenset[str]]:
    """Every task's freshly initialised adapter in one record, and the names the tasks share."""
    states = {name: trainable_state(new_model(task_config(cfg, name, g.spec))) for name, g in groups.items()}
    shared = shared_names(states) if cfg.multitask.shared else frozenset()
    return global_record(states, shared), shared


def multitask_strategy(cfg: Config, folder: RunFolder, groups: dict[str, TaskGroup]) -> OmniRadStrategy:
    """The configured strategy once per group, inside the observed multi-task strategy."""
    rejections = {name: RejectedReplies(folder) for name in groups}
    strategies = {name: build_strategy(task_config(cfg, name, group.spec), rejections[name], num_sites=len(group.nodes))
                  for name, group in groups.items()}
    selection = {name: group.spec.selection_metric for name, group in groups.items()}
    instructions = {name: vocabulary_instructions(task_config(cfg, name, group.spec)) for name, group in groups.items()}
    return OmniRadStrategy(MultiTaskStrategy(groups, strategies, rejections, selection, instructions), folder)


def write_tasks(folder: Path, groups: dict[str, TaskGroup], shared_tensors: int) -> None:
    """The run's task groups as ``tasks.json``: what each task is and which sites train it."""
    report = {name: {"kind": g.spec.kind, "labels": list(g.spec.label_names), "sites": list(g.sites)}
              for name, g in groups.items()}
    (folder / TASKS_FILE).write_text(json.dumps({"groups": report, "shared-tensors": shared_tensors}, indent=1))


def read_tasks(folder: Path) -> dict[str, TaskGroup]:
    """A multi-task run folder's groups, as ``write_tasks`` kept them (node ids are not kept)."""
    groups = json.loads((folder / TASKS_FILE).read_text())["groups"]
    return {name: TaskGroup(name, TaskSpec(g["kind"], tuple(g["labels"])), (), tuple(g["sites"]))
            for name, g in groups.items()}


def start_groups(grid: Grid, cfg: Config, folder: RunFolder
                 ) -> tuple[dict[str, TaskGroup], dict[str, torch.Tensor], dict[str, Any]]:
    """Ask every site, check and report the groups, count the vocabulary of a captioning group, keep
    them in the run folder (tasks.json), and return them with the initial global record and
    summary.json's vocabulary entries."""
    groups = group_sites(collect_declarations(grid), expected_tasks(cfg))
    if not groups:
        raise RuntimeError("task groups: no site declared a task (data.task-name in each site's file)")
    groups, vocabularies = group_vocabularies(grid, cfg, groups)
    initial, shared = initial_record(cfg, groups)
    log.info("%s", task_report(groups, shared, cfg.multitask.shared))
    write_tasks(folder.path, groups, len(shared))
    folder.track_tasks({name: g.spec.selection_metric for name, g in groups.items()}, SCORE,
                       {name: list(g.sites) for name, g in groups.items()})
    return groups, initial, vocabularies



def task_summary(groups: dict[str, TaskGroup], record: dict[str, torch.Tensor]) -> dict[str, Any]:
    """summary.json's multi-task keys: each task's sites and the bytes of what its sites exchange."""
    return {"tasks": {name: list(g.sites) for name, g in groups.items()},
            "task-adapter-bytes": {name: tensor_bytes(group_view(record, name).values()) for name in groups}}


def multitask(run: ServerRun) -> bool:
    return is_multitask(run.cfg.multitask)


@PHASES.register("task-groups", "model", applies=multitask)
def task_groups(run: ServerRun) -> None:
    """A multi-task run's groups and their global record, in place of the single adapter."""
    run.groups, run.initial, by_task = start_groups(run.grid, run.cfg, run.need_folder())
    if by_task:
        run.summary["vocabulary"] = by_task  # each captioning group's count


@PHASES.register("task-strategy", "strategy", applies=multitask)
def task_strategy(run: ServerRun) -> None:
    """One strategy per group, scored on each group's own test set (a multi-task run is not resumed)."""
    assert run.groups is not None  # task-groups made them
    folder = run.need_folder()
    run.round_end = RoundEnd(MultiTaskEvaluator(run.cfg, run.groups), folder, run.done_rounds)
    run.strategy = multitask_strategy(run.cfg, folder, run.groups)
    run.round_end.strategy = run.strategy


@PHASES.register("task-summary", "report", applies=multitask)
def summarise_tasks(run: ServerRun) -> None:
    assert run.groups is not None
    run.summary.update(task_summary(run.groups, run.initial))
