"""What each participant sees: a site's local train/validation data, the server's test set.

In simulation every site derives its share from the same pooled dataset and the same seed, so no
data moves between processes: each one rebuilds the pool and keeps only its own partition.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from omnirad.config import Config
from omnirad.data import synthetic
from omnirad.data.partition import partition_indices, split_train_val
from omnirad.tasks import MULTI_CLASS, TaskSpec

EMBEDDED_TRAIN_SEED = 0  # fixed, so runs with different run.seed share one dataset
EMBEDDED_TEST_SEED = 1


@dataclass(frozen=True)
class LabelledImages:
    """Images as MedMNIST stores them (uint8, (N, H, W) or (N, H, W, C)) with integer labels."""

    images: np.ndarray
    labels: np.ndarray
    groups: np.ndarray | None = None  # imaging style or source dataset, for feature-skew splits

    def subset(self, indices: np.ndarray) -> LabelledImages:
        groups = None if self.groups is None else self.groups[indices]
        return LabelledImages(self.images[indices], self.labels[indices], groups)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class SiteData:
    site_id: int
    train: LabelledImages
    val: LabelledImages


def task_info(cfg: Config) -> TaskSpec:
    """The classification task of the configured dataset."""
    return TaskSpec(MULTI_CLASS, tuple(synthetic.CLASS_NAMES))


@lru_cache(maxsize=4)
def _embedded(num_samples: int, size: int, seed: int) -> LabelledImages:
    split = synthetic.generate(num_samples, size=size, seed=seed)
    return LabelledImages(split.images, split.labels, split.modalities)


def pooled_train(cfg: Config) -> LabelledImages:
    return _embedded(cfg.data.num_train, cfg.data.size, EMBEDDED_TRAIN_SEED)


def test_set(cfg: Config) -> LabelledImages:
    """The server's held-out test set: never shared out among sites."""
    return _embedded(cfg.data.num_test, cfg.data.size, EMBEDDED_TEST_SEED)


def site_partitions(cfg: Config) -> list[np.ndarray]:
    """Pooled-sample indices of every site (deterministic in ``run.seed``)."""
    d, pool = cfg.data, pooled_train(cfg)
    return partition_indices(
        pool.labels, d.num_sites, d.partition, d.alpha, cfg.run.seed, d.min_site_samples,
        d.classes_per_site, d.quantity_exponent, pool.groups,
    )


def load_site(cfg: Config, site_id: int) -> SiteData:
    """Site ``site_id``'s local train and validation data."""
    if not 0 <= site_id < cfg.data.num_sites:
        raise ValueError(f"site {site_id} does not exist: data.num-sites={cfg.data.num_sites}")
    indices = site_partitions(cfg)[site_id]
    train_idx, val_idx = split_train_val(indices, cfg.data.val_fraction, cfg.run.seed + site_id)
    pool = pooled_train(cfg)
    return SiteData(site_id, pool.subset(train_idx), pool.subset(val_idx))
