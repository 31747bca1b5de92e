"""One participant's work, without Flower: train or evaluate a model on local data.

``LocalSite`` is what a hospital runs each round and what a notebook uses to train one site alone.
It computes what its model reads (frozen-encoder features or tokens, or the images) once and keeps
it for later rounds in the same process (simulation workers serve many rounds; deployment starts a
process per message, which is what the on-disk feature cache is for).
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from torch import nn

from omnirad.adapters import load_trainable_state, trainable_state
from omnirad.broadcast import Broadcast
from omnirad.closed_form import (
    HEAD_INITS,
    HeadStatistics,
    closed_form_head,
    head_inputs,
    private_statistics,
    scaled_likelihood,
    statistics_targets,
)
from omnirad.config.schema import Config
from omnirad.data.sites import LabelledImages, load_site, task_info
from omnirad.devices import placement_for
from omnirad.methods import site_method
from omnirad.metrics import peak_rss_mb, wire_keys
from omnirad.models import encoder_for, kept_at_sites, model_inputs, new_model
from omnirad.privacy import PrivacyLedger, check_budget, round_plan, statistics_noise, train_private
from omnirad.protocol import EPSILON, NUM_EXAMPLES, PEAK_RSS_MB, SITE_ID
from omnirad.seeds import site_round_seed, statistics_noise_seed
from omnirad.spectral import site_prototypes
from omnirad.standardise import FeatureMoments
from omnirad.training import evaluate_model, train_model

log = logging.getLogger(__name__)


class ModelInputs:
    """Labelled images and, computed on first use, what the configured model reads from them."""

    def __init__(self, cfg: Config, data: LabelledImages, desc: str) -> None:
        self.cfg, self.data, self._desc = cfg, data, desc

    @cached_property
    def inputs(self) -> torch.Tensor:
        return model_inputs(self.cfg, encoder_for(self.cfg), self.data.images, self._desc)

    @property
    def labels(self) -> np.ndarray:
        return self.data.labels


@dataclass(frozen=True)
class RoundInputs:
    """What a site starts a round from: the global adapter's shared tensors and the round's
    instructions from the server, and its own ``personal`` tensors from earlier rounds (under
    personalization; None before it has any, when the initial values complete the model)."""

    state: dict[str, torch.Tensor]
    server_round: int
    proximal_mu: float = 0.0
    personal: dict[str, torch.Tensor] | None = None
    broadcast: Broadcast | None = None


class LocalSite:
    """A site's data, encoder and training recipe; adapter state comes in and goes out by name."""

    def __init__(self, cfg: Config, site_id: int) -> None:
        self.cfg = cfg
        self.site_id = site_id
        self.task = task_info(cfg.data)
        self.placement = placement_for(cfg.run)  # before any work: a device this machine lacks is refused here
        log.info("site %d computes on %s", site_id, self.placement.describe())
        self.local_keys = kept_at_sites(cfg)
        data = load_site(cfg.data, site_id, seed=cfg.run.seed)
        self.train_set = ModelInputs(cfg, data.train, f"site {site_id} train")
        self.val_set = ModelInputs(cfg, data.val, f"site {site_id} val")

    def feature_moments(self) -> FeatureMoments:
        """What this site contributes to the feature standardisation: moments of its training features."""
        return FeatureMoments.of(self.train_set.inputs)

    def spectral_prototypes(self) -> torch.Tensor:
        """What this site contributes to the spectral knowledge bank: a few centroids of its images' spectra."""
        s = self.cfg.spectral
        return site_prototypes(self.train_set.data.images, s.frequency_size, s.prototypes, self.cfg.run.seed)

    def model_for(self, inputs: RoundInputs) -> nn.Module:
        """The configured model holding the round's state and this site's personal tensors."""
        model = new_model(self.cfg, inputs.broadcast)
        load_trainable_state(model, {**inputs.state, **(inputs.personal or {})}, optional=self.local_keys)
        return model

    def train(self, model: nn.Module, server_round: int, *, epochs: int | None = None,
              proximal_mu: float = 0.0) -> dict[str, float]:
        return train_model(model, self.train_set.inputs, self.train_set.labels, self.task, train=self.cfg.train,
                           placement=self.placement,
                           epochs=epochs, seed=site_round_seed(self.cfg.run.seed, server_round, self.site_id),
                           proximal_mu=proximal_mu)

    def fit(self, inputs: RoundInputs,
            ledger: PrivacyLedger | None = None) -> tuple[OrderedDict[str, torch.Tensor], dict[str, float]]:
        """Local epochs from the round's state (with FedProx's term when ``proximal_mu`` > 0, scaled
        by the strategy's site-side factor when it has one; with DP-SGD under ``privacy.dp``,
        accounted in ``ledger``); returns the new trainable state, local tensors included, and
        training metrics. Raises ``PrivacyBudgetSpent`` before training when the round would
        exceed the site's budget."""
        model = self.model_for(inputs)
        extra: dict[str, float] = {}
        if self.cfg.privacy.dp:
            ledger = ledger if ledger is not None else PrivacyLedger()
            plan = round_plan(self.cfg, len(self.train_set.labels))
            check_budget(ledger, plan, self.cfg.privacy)
            seed = site_round_seed(self.cfg.run.seed, inputs.server_round, self.site_id)
            stats = train_private(model, self.train_set.inputs, self.train_set.labels, self.task,
                                  cfg=self.cfg, plan=plan, ledger=ledger, seed=seed, placement=self.placement)
            extra = {EPSILON: ledger.epsilon(self.cfg.privacy.delta), "noise-multiplier": plan.noise_multiplier}
        else:
            scale = 1.0
            method, bank = site_method(self.cfg.strategy), inputs.broadcast.bank if inputs.broadcast is not None else None
            if method is not None and bank is not None:
                scale = method.proximal_scale(self.train_set.data.images, bank, self.cfg)
                extra = {method.scale_metric: scale}
            stats = self.train(model, inputs.server_round, proximal_mu=inputs.proximal_mu * scale)
        metrics = {
            **extra,
            NUM_EXAMPLES: float(len(self.train_set.labels)),
            SITE_ID: float(self.site_id),
            "train-loss": stats["train_loss"],
            PEAK_RSS_MB: peak_rss_mb(),
        }
        return trainable_state(model), metrics

    def head_statistics(self, broadcast: Broadcast | None = None, ledger: PrivacyLedger | None = None, *,
                        sharing: int = 1, draw: int = 0) -> tuple[HeadStatistics, dict[str, float]]:
        """This site's sums for the configured closed-form head (``model.head-init``), of what the
        head's output layer reads as every participant initialises it; under ``privacy.dp`` clipped
        and noised (the Gaussian mechanism), the release recorded in ``ledger``. ``sharing``: the
        sites of a secure sum under ``privacy.distributed-noise``, each adding 1/sqrt(sharing) of
        the noise (the sum carries all of it, as the ledger records); ``draw``: which noise draw."""
        spec = HEAD_INITS[self.cfg.model.head_init]
        if spec is None:
            raise ValueError("model.head-init=random: this run has no closed-form head")
        head = closed_form_head(new_model(self.cfg, broadcast))
        x = head_inputs(head, self.train_set.inputs)
        y = statistics_targets(self.task, self.train_set.labels)
        metrics = {NUM_EXAMPLES: float(len(x)), SITE_ID: float(self.site_id)}
        if not self.cfg.privacy.dp:
            return HeadStatistics.of(x, y, with_gram=spec.with_gram), metrics
        p, ledger = self.cfg.privacy, ledger if ledger is not None else PrivacyLedger()
        noise = statistics_noise(self.cfg)  # the release's, as the server sees the sum
        generator = torch.Generator().manual_seed(statistics_noise_seed(self.cfg.run.seed, self.site_id, draw))
        stats = private_statistics(x, y, with_gram=spec.with_gram, max_norm=p.max_feature_norm,
                                   noise_multiplier=noise / math.sqrt(sharing), generator=generator)
        ledger.history.append((noise, 1.0, 1))
        clipped = float((x.double().norm(dim=1) > p.max_feature_norm).double().mean())
        return stats, {**metrics, EPSILON: ledger.epsilon(p.delta), "clipped-share": clipped}

    def scale_losses(self, inputs: RoundInputs, scales: tuple[float, ...]) -> torch.Tensor:
        """Summed validation loss of the round's head with its logits times each scale (the server
        picks the scale with the lowest pooled loss). Held-out images, not the training ones: a
        closed form that separates its training images would take the largest scale there and
        ship saturated, uncalibrated probabilities with no gradient left for fine-tuning."""
        return scaled_likelihood(self.model_for(inputs), self.val_set.inputs, self.task, self.val_set.labels, scales)

    def evaluate(self, inputs: RoundInputs, finetune_epochs: int = 0) -> dict[str, float]:
        """Metrics on this site's validation split of the round's state (with the site's own local
        tensors under personalization) and, with ``finetune_epochs``, of a copy fine-tuned on the
        site's training split first (``finetuned-*``: the local fine-tuning baseline)."""
        model = self.model_for(inputs)
        metrics = wire_keys(evaluate_model(model, self.val_set.inputs, self.val_set.labels, self.task,
                                           placement=self.placement, volumes=self.val_set.data.volumes,
                                           volume_score=self.cfg.data.volume_score))
        if finetune_epochs > 0:
            self.train(model, self.cfg.num_server_rounds + 1, epochs=finetune_epochs)
            tuned = evaluate_model(model, self.val_set.inputs, self.val_set.labels, self.task, placement=self.placement)
            metrics.update({f"finetuned-{k}": v for k, v in wire_keys(tuned).items() if k != "loss"})
        return {NUM_EXAMPLES: float(len(self.val_set.labels)), SITE_ID: float(self.site_id), **metrics}
