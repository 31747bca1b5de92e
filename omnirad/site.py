"""One participant's work, without Flower: train or evaluate an adapter on local data.

``LocalSite`` is what a hospital runs each round and what a notebook uses to train one site alone.
It encodes its images with the frozen encoder once and keeps the features for later rounds in the
same process (simulation workers serve many rounds; deployment starts a process per message).
"""

from __future__ import annotations

import resource
from collections import OrderedDict
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from omnirad.adapters import create_adapter, load_trainable_state, trainable_state
from omnirad.config import Config, to_yaml
from omnirad.data.sites import LabelledImages, load_site, server_test_set, task_info
from omnirad.encoders import FrozenEncoder, create_encoder
from omnirad.feature_cache import cached_features
from omnirad.training import encode, evaluate_adapter, train_adapter


@lru_cache(maxsize=2)
def shared_encoder(name: str, weights: str, image_size: int) -> FrozenEncoder:
    """One encoder per process and configuration: it is frozen, so every site can share it."""
    return create_encoder(name, weights, image_size)


def encoder_for(cfg: Config) -> FrozenEncoder:
    return shared_encoder(cfg.model.encoder, cfg.model.weights, cfg.data.size)


def new_adapter(cfg: Config) -> nn.Module:
    """A freshly initialised adapter, seeded by ``run.seed`` so every participant builds the same one."""
    num_features, num_outputs = encoder_for(cfg).num_features, task_info(cfg).num_outputs
    with torch.random.fork_rng():
        torch.manual_seed(cfg.run.seed)
        return create_adapter(cfg.model.adapter, num_features, num_outputs, cfg.model.hidden_dim)


def wire_keys(metrics: dict[str, float]) -> dict[str, float]:
    """Metric names as Flower records carry them: kebab-case (``macro_f1`` -> ``macro-f1``)."""
    return {key.replace("_", "-"): value for key, value in metrics.items()}


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class EncodedImages:
    """Labelled images and, computed on first use, their frozen-encoder features.

    With ``cache_dir`` the features also go to (and come from) the on-disk feature cache.
    """

    def __init__(self, data: LabelledImages, encoder: FrozenEncoder, desc: str, cache_dir: str | None = None) -> None:
        self.data, self._encoder, self._desc, self._cache_dir = data, encoder, desc, cache_dir

    @cached_property
    def features(self) -> torch.Tensor:
        def run() -> torch.Tensor:
            return encode(self._encoder, self.data.images, desc=self._desc)

        if self._cache_dir is None:
            return run()
        return cached_features(Path(self._cache_dir), self._encoder, self.data.images, run)

    @property
    def labels(self) -> np.ndarray:
        return self.data.labels


class LocalSite:
    """A site's data, encoder and training recipe; adapter state comes in and goes out by name."""

    def __init__(self, cfg: Config, site_id: int) -> None:
        self.cfg = cfg
        self.site_id = site_id
        self.task = task_info(cfg)
        data = load_site(cfg, site_id)
        encoder = encoder_for(cfg)
        cache = cfg.model.cache_dir if cfg.model.feature_cache else None
        self.train_set = EncodedImages(data.train, encoder, f"site {site_id} train", cache)
        self.val_set = EncodedImages(data.val, encoder, f"site {site_id} val", cache)

    def fit(self, state: dict[str, torch.Tensor], server_round: int) -> tuple[OrderedDict, dict[str, float]]:
        """Local epochs from the given adapter state; returns the new state and training metrics."""
        adapter = new_adapter(self.cfg)
        load_trainable_state(adapter, state)
        t = self.cfg.train
        seed = self.cfg.run.seed * 100_003 + server_round * 1_009 + self.site_id
        stats = train_adapter(
            adapter, self.train_set.features, self.train_set.labels, self.task,
            t.local_epochs, t.lr, t.batch_size, t.weight_decay, seed,
        )
        metrics = {
            "num-examples": float(len(self.train_set.labels)),
            "site-id": float(self.site_id),
            "train-loss": stats["train_loss"],
            "peak-rss-mb": peak_rss_mb(),
        }
        return trainable_state(adapter), metrics

    def evaluate(self, state: dict[str, torch.Tensor]) -> dict[str, float]:
        """Metrics of the given adapter state on this site's validation split."""
        adapter = new_adapter(self.cfg)
        load_trainable_state(adapter, state)
        metrics = evaluate_adapter(adapter, self.val_set.features, self.val_set.labels, self.task)
        return {"num-examples": float(len(self.val_set.labels)), "site-id": float(self.site_id), **wire_keys(metrics)}


_SITES: OrderedDict[tuple[str, int], LocalSite] = OrderedDict()
_MAX_CACHED_SITES = 16


def get_site(cfg: Config, site_id: int) -> LocalSite:
    """The process-wide ``LocalSite`` for this configuration, so features are encoded once."""
    key = (to_yaml(cfg), site_id)
    if key not in _SITES:
        if len(_SITES) >= _MAX_CACHED_SITES:
            _SITES.popitem(last=False)
        _SITES[key] = LocalSite(cfg, site_id)
    return _SITES[key]


class CentralEvaluator:
    """The server's held-out test set, encoded once, scored against each round's global adapter.

    A natural split (``data.dataset=files``) without ``data.test-file`` has no server test set:
    then the evaluator returns no metrics and the run relies on federated validation.
    """

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        test = server_test_set(cfg)
        self.test = None if test is None else EncodedImages(test, encoder_for(cfg), "server test set")

    def __call__(self, state: dict[str, torch.Tensor]) -> dict[str, float]:
        if self.test is None:
            return {}
        adapter = new_adapter(self.cfg)
        load_trainable_state(adapter, state)
        return wire_keys(evaluate_adapter(adapter, self.test.features, self.test.labels, task_info(self.cfg)))
