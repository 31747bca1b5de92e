"""Let the run folder see every round's traffic and per-site replies without changing aggregation.

Flower's strategies aggregate but keep no per-site record; a federated study needs per-site
metrics and the bytes that crossed the network. ``observed`` wraps any Flower strategy class with a
mixin that reports messages to a ``RoundObserver`` and then defers to the strategy unchanged
(replies reach it in node order, for reproducible sums).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy


class RoundObserver(Protocol):
    def on_sent(self, server_round: int, phase: str, messages: list[Message]) -> None: ...

    def on_replies(self, server_round: int, phase: str, replies: list[Message]) -> None: ...

    def on_aggregated(self, server_round: int, phase: str, metrics: MetricRecord | None) -> None: ...


def _in_node_order(replies: Iterable[Message]) -> list[Message]:
    """Replies sorted by sender: the floating-point sums of aggregation then do not depend on
    which site answered first, so a run with the same seed gives the same numbers."""
    return sorted(replies, key=lambda m: m.metadata.src_node_id)


def observed(strategy_cls: type[Strategy]) -> type[Strategy]:
    """A subclass of ``strategy_cls`` that reports sent messages and replies to ``self.observer``."""

    class Observed(strategy_cls):  # type: ignore[misc, valid-type]
        observer: RoundObserver

        def configure_train(
            self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
        ) -> Iterable[Message]:
            messages = list(super().configure_train(server_round, arrays, config, grid))
            self.observer.on_sent(server_round, "train", messages)
            return messages

        def aggregate_train(
            self, server_round: int, replies: Iterable[Message]
        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
            replies = _in_node_order(replies)
            self.observer.on_replies(server_round, "train", replies)
            arrays, metrics = super().aggregate_train(server_round, replies)
            self.observer.on_aggregated(server_round, "train", metrics)
            return arrays, metrics

        def configure_evaluate(
            self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
        ) -> Iterable[Message]:
            messages = list(super().configure_evaluate(server_round, arrays, config, grid))
            self.observer.on_sent(server_round, "evaluate", messages)
            return messages

        def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
            replies = _in_node_order(replies)
            self.observer.on_replies(server_round, "evaluate", replies)
            metrics = super().aggregate_evaluate(server_round, replies)
            self.observer.on_aggregated(server_round, "evaluate", metrics)
            return metrics

    Observed.__name__ = Observed.__qualname__ = strategy_cls.__name__
    return Observed
