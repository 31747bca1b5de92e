"""Round numbers that continue a resumed run instead of restarting at 1."""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy


def continues_after(strategy_cls: type[Strategy], done_rounds: int) -> type[Strategy]:
    """A subclass of ``strategy_cls`` that numbers Flower's rounds 1, 2, ... as ``done_rounds`` + 1, + 2, ...

    Flower's ``start`` loop always counts from 1; the sites' random numbers, FedAdam's bias
    correction and the run folder all depend on the true round number.
    """

    class ContinuesAfter(strategy_cls):  # type: ignore[misc, valid-type]
        def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
            return super().configure_train(server_round + done_rounds, arrays, config, grid)

        def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
            return super().aggregate_train(server_round + done_rounds, replies)

        def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
            return super().configure_evaluate(server_round + done_rounds, arrays, config, grid)

        def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
            return super().aggregate_evaluate(server_round + done_rounds, replies)

    ContinuesAfter.__name__ = ContinuesAfter.__qualname__ = strategy_cls.__name__
    return ContinuesAfter
