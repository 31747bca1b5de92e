"""Grouped aggregation for a multi-task federation, on Flower's own strategies.

``MultiTaskStrategy`` holds one Flower strategy per task group (the configured one: FedAvg,
FedProx, FedAdam, ..., validated as usual) and lets each one sample, configure and aggregate only
its group's sites, through a view of the Grid that shows only them. Each group's strategy sees the
group's tensors and the shared ones under the site model's names; it averages them among its
members with its own weighting. The shared tensors (``omnirad.multitask``) are then combined
across groups, weighted by the examples each group aggregated, which for FedAvg is exactly the
average over every site. Flower has no multi-model strategy; this is the thin layer that makes one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from omnirad.multitask import SHARED, TaskGroup, group_view
from omnirad.protocol import NUM_EXAMPLES, TASK
from omnirad.tasks import SELECTION_FULL_SCALE
from omnirad_fl.strategies.wrapper import flower_strategy

log = logging.getLogger(__name__)
SCORE = "multitask-score"  # mean over tasks of each task's selection metric (macro-F1, Dice, CIDEr / 10)
WEIGHT = NUM_EXAMPLES


class GroupGrid:
    """The Grid as one task group's strategy should see it: only the group's nodes."""

    def __init__(self, grid: Grid, nodes: Iterable[int]) -> None:
        self._grid, self._nodes = grid, frozenset(nodes)

    def get_node_ids(self) -> list[int]:
        return [node for node in self._grid.get_node_ids() if node in self._nodes]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


class RejectedReplies:
    """A group strategy's rejection observer: remembers what validation left out (so the shared
    tensors are weighted by what was aggregated) and tells the run folder."""

    def __init__(self, forward: Any = None) -> None:
        self.forward = forward
        self.ids: set[int] = set()  # id() of the rejected reply objects of the round being aggregated

    def on_rejected(self, server_round: int, reply: Message, reason: str) -> None:
        self.ids.add(id(reply))
        if self.forward is not None:
            self.forward.on_rejected(server_round, reply, reason)

    def on_sent(self, *args: Any) -> None:  # the multi-task strategy reports traffic once, for all groups
        pass

    def on_replies(self, *args: Any) -> None:
        pass

    def on_aggregated(self, *args: Any) -> None:
        pass

    def trained_rounds(self) -> dict[int, int]:  # multi-task runs keep no state at the sites (no DP, no FedPer)
        return {}


class MultiTaskStrategy(Strategy):
    """One strategy per task group over a global record of every group's tensors (see module doc).

    ``selection``: each task's metric that picks the best round; ``SCORE`` is their mean.
    """

    def __init__(self, groups: dict[str, TaskGroup], strategies: dict[str, Strategy],
                 rejections: dict[str, RejectedReplies], selection: dict[str, str],
                 instructions: dict[str, dict[str, Any]] | None = None) -> None:
        self.groups, self.strategies, self.rejections, self.selection = groups, strategies, rejections, selection
        self.instructions = instructions or {}  # what a group's messages carry besides the run's (its vocabulary)
        self.task_of_node = {node: name for name, group in groups.items() for node in group.nodes}
        self._global: dict[str, Any] = {}
        self.sat_out: set[str] = set()  # tasks with too few sites connected in the phase being configured

    def summary(self) -> None:
        for name, group in self.groups.items():
            log.info("task %s: sites %s, %s", name, list(group.sites), type(self.strategies[name]).__name__)

    def _per_group(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid,
                   *, configure: Callable[[Strategy], Callable[..., Iterable[Message]]]) -> list[Message]:
        messages, self.sat_out = [], set()
        for name, group in self.groups.items():
            group_grid, strategy = GroupGrid(grid, group.nodes), self.strategies[name]
            connected, needed = len(group_grid.get_node_ids()), flower_strategy(strategy).min_available_nodes
            if connected < needed:  # Flower would wait for them, and hold up every other task
                log.warning("round %d: task %s has %d of the %d sites it needs connected: it sits this round out",
                            server_round, name, connected, needed)
                self.sat_out.add(name)
                continue
            view = ArrayRecord(group_view(dict(arrays.items()), name))
            instructions = ConfigRecord({**config, **self.instructions.get(name, {}), TASK: name})
            messages += configure(strategy)(server_round, view, instructions, group_grid)
        return messages

    def _by_group(self, replies: Iterable[Message]) -> dict[str, list[Message]]:
        split: dict[str, list[Message]] = {name: [] for name in self.groups if name not in self.sat_out}
        for reply in replies:
            name = self.task_of_node.get(reply.metadata.src_node_id)
            if name not in split:
                log.warning("reply from node %d, which is in no task group trained this round: ignored",
                            reply.metadata.src_node_id)
            else:
                split[name].append(reply)
        return split

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        self._global = dict(arrays.items())
        return self._per_group(server_round, arrays, config, grid, configure=lambda s: s.configure_train)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        record, metrics = dict(self._global), MetricRecord({f"{name}/sat-out": 1.0 for name in self.sat_out})
        shared_parts: list[RecordDict] = []
        for name, group_replies in self._by_group(replies).items():
            self.rejections[name].ids.clear()
            arrays, group_metrics = self.strategies[name].aggregate_train(server_round, group_replies)
            metrics.update({f"{name}/{k}": v for k, v in (group_metrics or {}).items()})
            if arrays is None:
                continue  # no usable reply: the group's tensors stay as they were
            shared = {}
            for key, value in arrays.items():
                if f"{SHARED}/{key}" in record:
                    shared[key] = value
                else:
                    record[f"{name}/{key}"] = value
            weight = sum(float(r.content["metrics"][WEIGHT]) for r in group_replies
                         if not r.has_error() and id(r) not in self.rejections[name].ids)
            if shared and weight > 0:
                shared_parts.append(RecordDict({"arrays": ArrayRecord(shared), "metrics": MetricRecord({WEIGHT: weight})}))
        if shared_parts:
            combined = aggregate_arrayrecords(shared_parts, WEIGHT)
            record.update({f"{SHARED}/{key}": Array(value.numpy().astype(record[f"{SHARED}/{key}"].numpy().dtype))
                           for key, value in combined.items()})
        return ArrayRecord(record), metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        return self._per_group(server_round, arrays, config, grid, configure=lambda s: s.configure_evaluate)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        metrics = MetricRecord()
        for name, group_replies in self._by_group(replies).items():
            group_metrics = self.strategies[name].aggregate_evaluate(server_round, group_replies) or {}
            metrics.update({f"{name}/{k}": v for k, v in group_metrics.items()})
        add_score(metrics, self.selection)
        return metrics


def add_score(metrics: MetricRecord | dict[str, float], selection: dict[str, str]) -> None:
    """``SCORE``: the mean of every task's selection metric on a 0-1 scale, when each task has one."""
    scores = [metrics.get(f"{task}/{metric}") for task, metric in selection.items()]
    if scores and all(score is not None for score in scores):
        scales = [SELECTION_FULL_SCALE.get(metric, 1.0) for metric in selection.values()]
        metrics[SCORE] = sum(float(score) / scale for score, scale in zip(scores, scales, strict=True)) / len(scores)
