"""Different tasks at different sites on one encoder: task declarations, groups, shared tensors.

Each site declares the task it trains (a name, a kind, a label set). Sites that declare the same
name form a task group: the server keeps one adapter per group and averages it among the group's
members only. Tensors that every group's model has under the same name and shape (LoRA on the
encoder, with ``model.adapter=lora``) are shared: averaged across all sites when
``multitask.shared`` is on. No Flower here: the strategy (``strategies.multitask``) moves the
records, this module decides who belongs where and how a global record is laid out.

The global record names a group's tensors ``<task>/<name>`` and the shared ones ``shared/<name>``;
a site receives and returns its own model's names (``group_view``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from omnirad.captions import vocabulary_copy
from omnirad.config import Config, ConfigError, DataConfig, MultitaskConfig, comma_list, to_flat
from omnirad.configure import load_config
from omnirad.data.sites import task_info
from omnirad.data.sources import source_of
from omnirad.data.sources.embedded import EMBEDDED_TASKS
from omnirad.data.sources.files import DEPLOYMENT, file_task
from omnirad.multitask_check import SITS_OUT
from omnirad.tasks import CAPTIONING, SEGMENTATION, TaskSpec

SHARED = "shared"  # prefix of the shared tensors in the global record; not a task name


class TaskMismatch(ValueError):
    """Sites that claim one task disagree on what it is, or a site was sent another task's adapter."""


@dataclass(frozen=True)
class TaskDeclaration:
    """What a site says it trains: the group's name, and the task's kind and labels."""

    name: str
    spec: TaskSpec

    def to_record(self) -> dict[str, Any]:
        return {"task": self.name, "kind": self.spec.kind, "labels": list(self.spec.label_names)}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> TaskDeclaration:
        return cls(str(record["task"]), TaskSpec(str(record["kind"]), tuple(str(x) for x in record["labels"])))


@dataclass(frozen=True)
class TaskGroup:
    """The sites (Flower node ids and site numbers) that train one task."""

    name: str
    spec: TaskSpec
    nodes: tuple[int, ...]
    sites: tuple[int, ...]



def is_multitask(multitask: MultitaskConfig) -> bool:
    return bool(multitask.site_tasks)


def site_task(multitask: MultitaskConfig, site_id: int) -> str:
    """The task ``multitask.site-tasks`` gives this site (``-``: none this run)."""
    return comma_list(multitask.site_tasks)[site_id]


def trained_task(multitask: MultitaskConfig, site_id: int) -> str:
    """The task a simulated site trains: its ``multitask.site-tasks`` entry; empty in a
    single-task run or for a site that sits this run out."""
    if not is_multitask(multitask) or site_task(multitask, site_id) == SITS_OUT:
        return ""
    return site_task(multitask, site_id)


def task_config(cfg: Config, name: str, spec: TaskSpec | None = None) -> Config:
    """The single-task configuration of task ``name``: its labels, and its adapter (classification
    sites train ``model.adapter``; segmentation sites a decoder, under the same LoRA with ``lora``;
    captioning sites the caption decoder beside a head).
    On the embedded data the name says what the task is; in deployment the site's declaration
    (``spec``: kind and classes) does."""
    if cfg.data.dataset == DEPLOYMENT:
        if spec is None:
            raise ConfigError(f"task '{name}': a deployed task is what its sites declare; no declaration given")
        overrides: dict[str, Any] = {"data.task": spec.kind, "data.num-classes": spec.num_outputs}
        if spec.captioning and spec.label_names:  # the vocabulary counted by the task's sites, as a file
            overrides["data.vocabulary"] = str(vocabulary_copy(spec.label_names, Path(cfg.model.cache_dir).expanduser()))
    elif name in EMBEDDED_TASKS:
        overrides = EMBEDDED_TASKS[name].overrides(name)
    else:
        raise ConfigError(f"multitask.site-tasks: unknown task '{name}'; known: {', '.join(EMBEDDED_TASKS)}")
    flat = {**to_flat(cfg), **overrides, "multitask.site-tasks": ""}
    if flat["data.task"] in (SEGMENTATION, CAPTIONING):
        from omnirad.adapters import ADAPTERS

        adapter = ADAPTERS[cfg.model.adapter]
        twin = adapter.segmentation_twin if flat["data.task"] == SEGMENTATION else adapter.captioning_twin
        flat["model.adapter"] = twin
        flat["model.head-init"] = "random"  # a decoder has no closed form: it starts from its initialisation
    return load_config(flat)


def site_view(cfg: Config, site_id: int) -> Config:
    """The configuration a site trains with: its own task's in a multi-task run, else the run's."""
    if not is_multitask(cfg.multitask) or site_task(cfg.multitask, site_id) == SITS_OUT:
        return cfg
    return task_config(cfg, site_task(cfg.multitask, site_id))


def declared_spec(kind: str, num_classes: int) -> TaskSpec:
    """What a deployed site's file holds, as it declares it: a captioning task without words yet
    (the run counts its vocabulary from the task's sites before round 1), else ``file_task``'s."""
    return TaskSpec(CAPTIONING, ()) if kind == CAPTIONING else file_task(kind, num_classes)


def declaration(name: str, data: DataConfig) -> TaskDeclaration | None:
    """What a site that trains task ``name`` on ``data`` (its task's view) declares (None: it has
    no task this run)."""
    if not name:
        return None
    counted = source_of(data.dataset).natural_split  # site files: the run counts the words
    if data.task == CAPTIONING and counted and not data.vocabulary:
        return TaskDeclaration(name, declared_spec(CAPTIONING, 0))
    return TaskDeclaration(name, task_info(data))


def group_sites(declared: dict[int, tuple[int, TaskDeclaration | None]],
                expected: dict[str, TaskSpec] | None) -> dict[str, TaskGroup]:
    """Task groups from ``{node: (site, declaration)}``, in task-name order.

    Raises ``TaskMismatch`` naming the sites when two sites give one task different kinds or label
    sets, or when a declaration differs from what the server knows the task to be (``expected``;
    None in deployment, where the sites' declarations define the tasks).
    """
    members: dict[str, list[tuple[int, int, TaskDeclaration]]] = {}
    for node, (site, found) in sorted(declared.items(), key=lambda item: item[1][0]):
        if found is not None:
            members.setdefault(found.name, []).append((node, site, found))
    groups = {}
    for name in sorted(members):
        _, first_site, first = members[name][0]
        for _, site, other in members[name][1:]:
            if other.spec != first.spec:
                raise TaskMismatch(f"task '{name}': site {first_site} declares {_describe(first.spec)} but site "
                                   f"{site} declares {_describe(other.spec)}; one task needs one label set")
        if expected is not None:
            _check_expected(name, first_site, first.spec, expected)
        nodes, sites = zip(*((node, site) for node, site, _ in members[name]), strict=True)
        groups[name] = TaskGroup(name, first.spec, tuple(nodes), tuple(sites))
    return groups


def _check_expected(name: str, site: int, declared: TaskSpec, expected: dict[str, TaskSpec]) -> None:
    if name not in expected:
        raise TaskMismatch(f"site {site} declares task '{name}', which this run does not train "
                           f"(known: {', '.join(sorted(expected))})")
    if expected[name] != declared:
        raise TaskMismatch(f"task '{name}': site {site} declares {_describe(declared)}, the server "
                           f"expects {_describe(expected[name])}")


def _describe(spec: TaskSpec) -> str:
    return f"{spec.kind} [{', '.join(spec.label_names)}]"


def shared_names(states: dict[str, dict[str, torch.Tensor]]) -> frozenset[str]:
    """The encoder's tensors (LoRA) that every task's model has with one shape: what the tasks can
    share. Heads never are, even when two tasks' heads have one shape: each reads its own labels."""
    from omnirad.adapters.finetune import ENCODER_MODULE

    if len(states) < 2:
        return frozenset()
    first, *others = states.values()
    return frozenset(k for k, v in first.items() if k.startswith(f"{ENCODER_MODULE}.")
                     and all(k in o and o[k].shape == v.shape for o in others))


def global_record(states: dict[str, dict[str, torch.Tensor]], shared: frozenset[str]) -> dict[str, torch.Tensor]:
    """Every task's tensors in one record: shared ones once (from the first task), the rest per task."""
    record: dict[str, torch.Tensor] = {}
    for task, state in states.items():
        for key, value in state.items():
            if key in shared:
                record.setdefault(f"{SHARED}/{key}", value)
            else:
                record[f"{task}/{key}"] = value
    return record


def group_view(record: dict[str, Any], task: str) -> dict[str, Any]:
    """What a site of ``task`` trains: its task's tensors and the shared ones, under its model's names."""
    view = {}
    for key, value in record.items():
        owner, _, name = key.partition("/")
        if owner in (task, SHARED):
            view[name] = value
    return view


def task_report(groups: dict[str, TaskGroup], shared: frozenset[str], shared_on: bool) -> str:
    """The groups as printed at the start of a run."""
    lines = [f"  {g.name}: {_describe(g.spec)}, sites {', '.join(map(str, g.sites))}" for g in groups.values()]
    if shared and shared_on:
        lines.append(f"  shared by all {sum(len(g.sites) for g in groups.values())} sites: {len(shared)} tensors")
    elif shared:
        lines.append(f"  {len(shared)} tensors common to every task, averaged within each group (multitask.shared=false)")
    return "Task groups:\n" + "\n".join(lines)
