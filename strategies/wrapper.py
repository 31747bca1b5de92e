"""``OmniRadStrategy``: Flower's strategy, wrapped as Flower's own DP wrapper wraps one.

The wrapper adds what the project needs around any Flower strategy without changing how it
aggregates: the run folder sees every message and reply (per-site records, bytes), replies are
screened before aggregation (``strategies.validation``), the global adapter keeps its dtypes
whatever the strategy's arithmetic returns, a resumed run numbers its rounds on from where it
stopped, and each training message tells the sites how many rounds each has trained so far. Replies reach the strategy in site order, so floating-point sums, and so a seeded run's
numbers, do not depend on which site answered first.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Iterable
from typing import Protocol

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from omnirad.protocol import METRICS, ROUND_TOKEN, SITE_ID, TRAINED_ROUNDS, TRAINED_SITES
from omnirad_fl.strategies.validation import UpdateRules, reply_size_problem, round_receipt_problem, screen_replies

log = logging.getLogger(__name__)


class RoundObserver(Protocol):
    """What the run folder learns of each round."""

    def on_sent(self, server_round: int, phase: str, messages: list[Message]) -> None: ...

    def on_replies(self, server_round: int, phase: str, replies: list[Message]) -> None: ...

    def on_aggregated(self, server_round: int, phase: str, metrics: MetricRecord | None) -> None: ...

    def on_rejected(self, server_round: int, reply: Message, reason: str) -> None: ...

    def trained_rounds(self) -> dict[int, int]: ...


class OmniRadStrategy(Strategy):
    """``strategy`` (any Flower strategy) observed by ``observer``, its training replies screened
    by ``rules`` (None: not screened), its rounds numbered after ``done_rounds`` (a resumed run).

    Flower 1.42's FedAdam scales its step by a NumPy float64 scalar, which (NumPy 2 promotion
    rules) turns float32 arrays into float64 after the first round: the global adapter would then
    travel at twice the bytes and validation would refuse every float32 reply. The aggregate is
    therefore cast back to the dtypes the round started from; the strategy's own state is left as
    it keeps it.
    """

    def __init__(self, strategy: Strategy, observer: RoundObserver, *, rules: UpdateRules | None = None,
                 done_rounds: int = 0) -> None:
        super().__init__()
        self.strategy, self.observer, self.rules, self.done_rounds = strategy, observer, rules, done_rounds
        self._start: dict[str, np.ndarray] = {}  # the global arrays the training round started from
        self._token = ""  # this training round's token, which every reply must echo

    def __repr__(self) -> str:
        return f"OmniRadStrategy({self.strategy!r})"

    def summary(self) -> None:
        screening = "off" if self.rules is None else (
            f"max norm {self.rules.max_norm or 'none'}, {self.rules.max_norm_ratio or 'no'} x median, "
            f"{'clip' if self.rules.clip else 'leave out'}, at least {self.rules.min_valid} valid")
        log.info("OmniRad-FL around %s: per-site records, update screening %s%s", type(self.strategy).__name__,
                 screening, f", rounds after {self.done_rounds}" if self.done_rounds else "")
        self.strategy.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        server_round += self.done_rounds
        self._start = {key: arrays[key].numpy() for key in arrays}
        trained = self.observer.trained_rounds()  # a site whose state holds fewer refuses to train under DP
        # a wrapper inside another (one per task group) keeps the outer one's token: one per round
        self._token = str(config.get(ROUND_TOKEN, "")) or new_round_token()
        config = ConfigRecord({**config, TRAINED_SITES: list(trained), TRAINED_ROUNDS: list(trained.values()),
                               ROUND_TOKEN: self._token})
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        self.observer.on_sent(server_round, "train", messages)
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.done_rounds
        ordered = in_site_order(replies)
        self.observer.on_replies(server_round, "train", ordered)
        arrays, metrics = self._screened_aggregate(server_round, ordered)
        if arrays is not None:
            arrays = ArrayRecord({key: Array(np.asarray(arrays[key].numpy(), dtype=self._start[key].dtype
                                                        if key in self._start else None)) for key in arrays})
        self.observer.on_aggregated(server_round, "train", metrics)
        return arrays, metrics

    def _unanswerable(self, reply: Message) -> str | None:
        """Why a successful reply cannot be read at all: not this round's, or too large; else None."""
        if reply.has_error():
            return None
        return round_receipt_problem(reply, self._token) or reply_size_problem(reply, self._start)

    def _screened_aggregate(self, server_round: int, replies: list[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        refused, answering = [], []
        for reply in replies:
            reason = self._unanswerable(reply)
            if reason:
                refused.append((reply, reason))
            else:
                answering.append(reply)
        replies = answering
        if self.rules is None:
            self._leave_out(server_round, refused)
            return self.strategy.aggregate_train(server_round, replies)
        valid, rejected = screen_replies(replies, self._start, self.rules)
        rejected = refused + rejected
        self._leave_out(server_round, rejected)
        usable = [r for r in valid if not r.has_error()]
        if len(usable) < self.rules.min_valid:
            log.warning("round %d: %d valid updates, fewer than strategy.min-valid-updates=%d: the global "
                        "model stays as it was", server_round, len(usable), self.rules.min_valid)
            return None, MetricRecord({"rejected-updates": len(rejected), "valid-updates": len(usable)})
        arrays, metrics = self.strategy.aggregate_train(server_round, valid)
        metrics = metrics if metrics is not None else MetricRecord()
        metrics["rejected-updates"], metrics["valid-updates"] = len(rejected), len(usable)
        return arrays, metrics

    def _leave_out(self, server_round: int, rejected: list[tuple[Message, str]]) -> None:
        for reply, reason in rejected:
            log.warning("round %d: update from node %d left out: %s", server_round, reply.metadata.src_node_id, reason)
            self.observer.on_rejected(server_round, reply, reason)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        server_round += self.done_rounds
        messages = list(self.strategy.configure_evaluate(server_round, arrays, config, grid))
        self.observer.on_sent(server_round, "evaluate", messages)
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        server_round += self.done_rounds
        ordered = in_site_order(replies)
        self.observer.on_replies(server_round, "evaluate", ordered)
        metrics = self.strategy.aggregate_evaluate(server_round, ordered)
        self.observer.on_aggregated(server_round, "evaluate", metrics)
        return metrics


def new_round_token() -> str:
    """128 random bits: no earlier round, other run or resumed run draws the same."""
    return secrets.token_hex(16)


def in_site_order(replies: Iterable[Message]) -> list[Message]:
    """Replies sorted by the site number each reports (then by node: failed replies carry none).
    Floating-point sums of aggregation then depend neither on which site answered first nor on
    the node ids, which Flower draws at random in every simulation: a run with the same seed gives
    the same numbers to the last digit."""
    return sorted(replies, key=lambda m: (reported_site(m), m.metadata.src_node_id))


def reported_site(reply: Message) -> float:
    if reply.has_error() or METRICS not in reply.content:
        return math.inf
    return float(reply.content[METRICS].get(SITE_ID, math.inf))


def flower_strategy(strategy: Strategy) -> Strategy:
    """The innermost strategy, under this wrapper and Flower's DP wrapper: the one whose state
    (FedAdam's moments, FedAvgM's momentum) a checkpoint keeps."""
    while isinstance(getattr(strategy, "strategy", None), Strategy):
        strategy = strategy.strategy
    return strategy
