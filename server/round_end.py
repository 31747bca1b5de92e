"""What the server does after every round: score the global adapter, record the round, keep the
best adapter and checkpoint the run."""

from __future__ import annotations

from collections.abc import Callable

import torch
from flwr.app import ArrayRecord, MetricRecord
from flwr.serverapp.strategy import Strategy

from omnirad_fl.server.checkpoint import save_checkpoint
from omnirad_fl.server.run_folder import RunFolder, best_round


class RoundEnd:
    """Flower's ``evaluate_fn``: called after every round, it scores and records the round, keeps
    the best adapter (by the run folder's selection metric) and checkpoints the run. Flower counts
    rounds from 1 even in a resumed run: ``done_rounds`` turns its numbers into the run's."""

    def __init__(self, evaluator: Callable[[dict[str, torch.Tensor]], dict[str, float]], folder: RunFolder,
                 done_rounds: int = 0) -> None:
        self.evaluator = evaluator
        self.selection_metric = folder.selection_metric
        self.folder, self.done_rounds = folder, done_rounds
        best = best_round(folder.rounds, self.selection_metric)
        self.best_score = best["federated-val"][self.selection_metric] if best else float("-inf")
        self.strategy: Strategy | None = None  # set once built: its state goes into each checkpoint

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        state = arrays.to_torch_state_dict()
        if server_round == 0:  # Flower's look at the starting arrays: not a round of the run
            return MetricRecord(self.evaluator(state))
        return MetricRecord(self.record(server_round + self.done_rounds, state))

    def record(self, server_round: int, state: dict[str, torch.Tensor]) -> dict[str, float]:
        """Score the round's global adapter, write its line, keep it if best, checkpoint it."""
        metrics = self.evaluator(state)
        line = self.folder.end_round(server_round, metrics)
        score = line["federated-val"].get(self.selection_metric, float("-inf"))
        if score > self.best_score:
            self.best_score = score
            self.folder.save_best(state)
        if self.strategy is not None and server_round > 0:
            save_checkpoint(self.folder.path, server_round, state, self.strategy)
        return metrics
