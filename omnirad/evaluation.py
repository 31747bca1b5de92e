"""The server's held-out test set, encoded once, scored against each round's global model."""

from __future__ import annotations

import copy

import torch
from torch import nn

from omnirad.adapters import load_trainable_state
from omnirad.broadcast import Broadcast
from omnirad.config.schema import Config
from omnirad.data.sites import LabelledImages, server_test_set, task_info
from omnirad.devices import placement_for
from omnirad.metrics import wire_keys
from omnirad.models import kept_at_sites, new_model
from omnirad.site import ModelInputs
from omnirad.training import evaluate_model, predict


class CentralEvaluator:
    """Scores global adapters on the server's test set.

    A natural split (``data.dataset=files``) without ``data.test-file`` has no server test set, and
    under FedPer there is no global output layer: then the evaluator returns no metrics and the run
    relies on federated validation. Under FedBN the global model has the initial normalisation.
    """

    def __init__(self, cfg: Config, broadcast: Broadcast | None = None) -> None:
        self.cfg, self.broadcast = cfg, broadcast
        test = None if cfg.personalization.mode == "fedper" else server_test_set(cfg.data)
        self.test = None if test is None else ModelInputs(cfg, test, "server test set")
        self.local_keys = kept_at_sites(cfg)

    def __call__(self, state: dict[str, torch.Tensor]) -> dict[str, float]:
        if self.test is None:
            return {}
        return wire_keys(evaluate_model(self.model(state), self.test.inputs, self.test.labels, task_info(self.cfg.data),
                                        placement=placement_for(self.cfg.run), volumes=self.test.data.volumes,
                                        volume_score=self.cfg.data.volume_score))

    def with_broadcast(self, broadcast: Broadcast | None) -> CentralEvaluator:
        """This evaluator with another broadcast (a site alone's own standardisation), sharing the
        test set and so its encoded inputs."""
        other = copy.copy(self)
        other.broadcast = broadcast
        return other

    def model(self, state: dict[str, torch.Tensor]) -> nn.Module:
        model = new_model(self.cfg, self.broadcast)
        load_trainable_state(model, state, optional=self.local_keys)
        return model

    @torch.no_grad()
    def predictions(self, state: dict[str, torch.Tensor]) -> tuple[LabelledImages, torch.Tensor]:
        """The test set and the model's outputs on it (logits; per-pixel for segmentation), for reports."""
        if self.test is None:
            raise ValueError("no server test set (data.test-file is empty, or FedPer has no global model)")
        return self.test.data, predict(self.model(state), self.test.inputs, placement=placement_for(self.cfg.run))
