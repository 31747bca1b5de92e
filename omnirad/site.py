"""One participant's work, without Flower: train or evaluate a model on local data.

``LocalSite`` is what a hospital runs each round and what a notebook uses to train one site alone.
It computes what its model reads (frozen-encoder features or tokens, or the images) once and keeps
it for later rounds in the same process (simulation workers serve many rounds; deployment starts a
process per message, which is what the on-disk feature cache is for).
"""

from __future__ import annotations

import copy
import resource
from collections import OrderedDict
from functools import cached_property, lru_cache

import numpy as np
import torch
from torch import nn

from omnirad.adapters import load_trainable_state, trainable_state
from omnirad.broadcast import Broadcast
from omnirad.config import Config, to_yaml
from omnirad.data.sites import LabelledImages, load_site, server_test_set, task_info
from omnirad.encoders import FrozenEncoder, create_encoder
from omnirad.models import build_model, model_inputs
from omnirad.personalization import local_keys
from omnirad.privacy import PrivacyLedger, check_budget, round_plan, train_private
from omnirad.spectral import alignment_weight, site_prototypes
from omnirad.standardise import FeatureMoments
from omnirad.training import evaluate_model, predict, train_model


@lru_cache(maxsize=2)
def shared_encoder(name: str, weights: str, image_size: int) -> FrozenEncoder:
    """One encoder per process and configuration: it is frozen, so every site can share it."""
    return create_encoder(name, weights, image_size)


def encoder_for(cfg: Config) -> FrozenEncoder:
    return shared_encoder(cfg.model.encoder, cfg.model.weights, cfg.data.size)


def new_model(cfg: Config, broadcast: Broadcast | None = None) -> nn.Module:
    """The configured model, freshly initialised and identical in every participant; with what the
    server broadcasts (the spectral bank, the feature standardisation) set on it."""
    model = build_model(cfg, encoder_for(cfg))
    return broadcast.apply(model) if broadcast is not None else model


def kept_at_sites(cfg: Config, model: nn.Module | None = None) -> frozenset[str]:
    """The configured model's tensors that stay at each site (personalization, spectral suffix)."""
    return local_keys(model if model is not None else new_model(cfg), cfg.personalization.mode, cfg.model.adapter)


def wire_keys(metrics: dict[str, float]) -> dict[str, float]:
    """Metric names as Flower records carry them: kebab-case (``macro_f1`` -> ``macro-f1``)."""
    return {key.replace("_", "-"): value for key, value in metrics.items()}


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


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


class LocalSite:
    """A site's data, encoder and training recipe; adapter state comes in and goes out by name.

    Under ``personalization.mode`` the state that comes in holds only the federated tensors; the
    site's own local tensors (``personal``) complete it, or, before it has any, the initial values.
    """

    def __init__(self, cfg: Config, site_id: int) -> None:
        self.cfg = cfg
        self.site_id = site_id
        self.task = task_info(cfg)
        self.local_keys = kept_at_sites(cfg)
        data = load_site(cfg, site_id)
        self.train_set = ModelInputs(cfg, data.train, f"site {site_id} train")
        self.val_set = ModelInputs(cfg, data.val, f"site {site_id} val")

    def feature_moments(self) -> FeatureMoments:
        """What this site contributes to the feature standardisation: moments of its training features."""
        return FeatureMoments.of(self.train_set.inputs)

    def spectral_prototypes(self) -> torch.Tensor:
        """What this site contributes to the spectral knowledge bank: a few centroids of its images' spectra."""
        s = self.cfg.spectral
        return site_prototypes(self.train_set.data.images, s.frequency_size, s.prototypes, self.cfg.run.seed)

    def model_from(self, state: dict[str, torch.Tensor], personal: dict[str, torch.Tensor] | None = None,
                   broadcast: Broadcast | None = None) -> nn.Module:
        """The configured model holding ``state`` and this site's ``personal`` tensors."""
        model = new_model(self.cfg, broadcast)
        load_trainable_state(model, {**state, **(personal or {})}, optional=self.local_keys)
        return model

    def round_seed(self, server_round: int) -> int:
        """Shuffling, dropout and DP noise of one round of this site: reproducible, distinct per round and site."""
        return self.cfg.run.seed * 100_003 + server_round * 1_009 + self.site_id

    def train(self, model: nn.Module, epochs: int, server_round: int, proximal_mu: float = 0.0) -> dict[str, float]:
        t = self.cfg.train
        return train_model(
            model, self.train_set.inputs, self.train_set.labels, self.task,
            epochs, t.lr, t.batch_size, t.weight_decay, self.round_seed(server_round), proximal_mu,
        )

    def fit(self, state: dict[str, torch.Tensor], server_round: int, proximal_mu: float = 0.0,
            personal: dict[str, torch.Tensor] | None = None, broadcast: Broadcast | None = None,
            ledger: PrivacyLedger | None = None) -> tuple[OrderedDict, dict[str, float]]:
        """Local epochs from the given state (with FedProx's term when ``proximal_mu`` > 0, scaled by
        the site's spectral distance from the broadcast bank under spectral alignment; with DP-SGD under
        ``privacy.dp``, accounted in ``ledger``); returns the new trainable state, local tensors
        included, and training metrics. Raises ``PrivacyBudgetSpent`` before training when the
        round would exceed the site's budget."""
        model = self.model_from(state, personal, broadcast)
        bank = broadcast.bank if broadcast is not None else None
        extra: dict[str, float] = {}
        if self.cfg.privacy.dp:
            ledger = ledger if ledger is not None else PrivacyLedger()
            plan = round_plan(self.cfg, len(self.train_set.labels))
            check_budget(ledger, plan, self.cfg)
            stats = train_private(model, self.train_set.inputs, self.train_set.labels, self.task, self.cfg, plan, ledger,
                                  self.round_seed(server_round))
            extra = {"epsilon": ledger.epsilon(self.cfg.privacy.delta), "noise-multiplier": plan.noise_multiplier}
        else:
            weight = 1.0 if bank is None else alignment_weight(self.train_set.data.images, bank, self.cfg.spectral.frequency_size)
            stats = self.train(model, self.cfg.train.local_epochs, server_round, proximal_mu * weight)
            extra = {"alignment-weight": weight} if bank is not None else {}
        metrics = {
            **extra,
            "num-examples": float(len(self.train_set.labels)),
            "site-id": float(self.site_id),
            "train-loss": stats["train_loss"],
            "peak-rss-mb": peak_rss_mb(),
        }
        return trainable_state(model), metrics

    def evaluate(self, state: dict[str, torch.Tensor], personal: dict[str, torch.Tensor] | None = None,
                 finetune_epochs: int = 0, broadcast: Broadcast | None = None) -> dict[str, float]:
        """Metrics on this site's validation split of the given state (with the site's own local
        tensors under personalization) and, with ``finetune_epochs``, of a copy fine-tuned on the
        site's training split first (``finetuned-*``: the local fine-tuning baseline)."""
        model = self.model_from(state, personal, broadcast)
        metrics = wire_keys(evaluate_model(model, self.val_set.inputs, self.val_set.labels, self.task))
        if finetune_epochs > 0:
            self.train(model, finetune_epochs, server_round=self.cfg.num_server_rounds + 1)
            tuned = evaluate_model(model, self.val_set.inputs, self.val_set.labels, self.task)
            metrics.update({f"finetuned-{k}": v for k, v in wire_keys(tuned).items() if k != "loss"})
        return {"num-examples": float(len(self.val_set.labels)), "site-id": float(self.site_id), **metrics}


_SITES: OrderedDict[tuple[str, int], LocalSite] = OrderedDict()
_SITE_CACHE_BYTES = 1 << 30  # what a worker keeps of its sites' images and encoded inputs


def _held_bytes(site: LocalSite) -> int:
    """Images and, once computed, encoded inputs that a cached site holds."""
    held = 0
    for part in (site.train_set, site.val_set):
        held += part.data.images.nbytes
        if "inputs" in part.__dict__:
            held += part.inputs.nbytes
    return held


def get_site(cfg: Config, site_id: int) -> LocalSite:
    """The process-wide ``LocalSite`` for this configuration, so images are encoded once. Sites
    are kept, least recently used first out, while they hold under 1 GiB: a worker that serves
    100 small sites keeps them all, one with large token maps a few."""
    key = (to_yaml(cfg), site_id)
    if key in _SITES:
        _SITES.move_to_end(key)
        return _SITES[key]
    while _SITES and sum(_held_bytes(s) for s in _SITES.values()) > _SITE_CACHE_BYTES:
        _SITES.popitem(last=False)
    _SITES[key] = LocalSite(cfg, site_id)
    return _SITES[key]


class CentralEvaluator:
    """The server's held-out test set, encoded once, scored against each round's global model.

    A natural split (``data.dataset=files``) without ``data.test-file`` has no server test set, and
    under FedPer there is no global output layer: then the evaluator returns no metrics and the run
    relies on federated validation. Under FedBN the global model has the initial normalisation.
    """

    def __init__(self, cfg: Config, broadcast: Broadcast | None = None) -> None:
        self.cfg, self.broadcast = cfg, broadcast
        test = None if cfg.personalization.mode == "fedper" else server_test_set(cfg)
        self.test = None if test is None else ModelInputs(cfg, test, "server test set")
        self.local_keys = kept_at_sites(cfg)

    def __call__(self, state: dict[str, torch.Tensor]) -> dict[str, float]:
        if self.test is None:
            return {}
        return wire_keys(evaluate_model(self.model(state), self.test.inputs, self.test.labels, task_info(self.cfg)))

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
        return self.test.data, predict(self.model(state), self.test.inputs)
