"""What each participant sees: a site's local train/validation data, the server's test set.

In simulation every site derives its share from the same pooled dataset and the same seed, so no
data moves between processes: each one rebuilds the pool and keeps only its own partition. In a
natural split each site reads its own file. Where the images come from is the data source's
business (``omnirad.data.sources``).
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import numpy as np

from omnirad.config.federation import require_num_sites
from omnirad.config.schema import DataConfig
from omnirad.data.caption_csv import captions_by_split
from omnirad.data.labelled import LabelledImages, SiteData
from omnirad.data.partition import partition_indices, partition_volumes, split_site, split_train_val
from omnirad.data.site_files import read_site_file
from omnirad.data.sources import source_of
from omnirad.data.sources.files import file_task, read_options
from omnirad.seeds import site_split_seed
from omnirad.tasks import TaskSpec

__all__ = ["LabelledImages", "SiteData", "file_task", "load_site", "partition_class_names", "partition_labels",
           "pooled_train", "server_test_set", "site_partitions", "task_info", "training_captions"]


def task_info(data: DataConfig) -> TaskSpec:
    """The task of the configured data: classification (its labels), or segmentation of its masks."""
    return source_of(data.dataset).task(data)


def pooled_train(data: DataConfig) -> LabelledImages:
    """The training pool that a simulated split shares out among sites."""
    return source_of(data.dataset).pool(data)


def server_test_set(data: DataConfig) -> LabelledImages | None:
    """The server's held-out test set, never shared out among sites; None when there is none."""
    return source_of(data.dataset).test_set(data)


def partition_labels(data: LabelledImages) -> np.ndarray:
    """One class per sample to split by: the strata when given; else the class, the first positive
    label (multi-label), or the highest class in the mask (segmentation: 'has a lesion')."""
    if data.strata is not None:
        return data.strata
    labels = data.labels
    if labels.ndim == 3:
        return cast(np.ndarray, labels.reshape(len(labels), -1).max(axis=1))
    return labels if labels.ndim == 1 else labels.argmax(axis=1)


def partition_class_names(data: DataConfig) -> tuple[str, ...]:
    """Names of the classes ``partition_labels`` returns."""
    return source_of(data.dataset).partition_class_names(data)


_PARTITIONS: dict[tuple[str, int], list[np.ndarray]] = {}


def site_partitions(data: DataConfig, *, seed: int) -> list[np.ndarray]:
    """Pooled-sample indices of every site (deterministic in the run's ``seed``), computed once per
    process and split: a simulation worker serves many sites, and partitioning the pool for
    every one of them cost a 100-site run about a third of a second per new site. A pool of slices
    is split a whole volume at a time (``partition_volumes``)."""
    require_num_sites(data)
    key = (repr(data), seed)  # everything the split depends on
    if key not in _PARTITIONS:
        pool = pooled_train(data)
        if len(_PARTITIONS) >= 8:
            _PARTITIONS.pop(next(iter(_PARTITIONS)))
        labels = partition_labels(pool)
        _PARTITIONS[key] = (partition_indices(labels, data, seed=seed, groups=pool.groups) if pool.volumes is None
                            else partition_volumes(labels, pool.volumes, data, seed=seed, groups=pool.groups))
    return _PARTITIONS[key]


def check_site_id(data: DataConfig, site_id: int) -> None:
    if not 0 <= site_id < require_num_sites(data):
        raise ValueError(f"site {site_id} does not exist: data.num-sites={data.num_sites}")


def load_site(data: DataConfig, site_id: int, *, seed: int) -> SiteData:
    """Site ``site_id``'s local train and validation data: its partition of the pool, or, in a
    natural split, its own file (in deployment the site's own view of the configuration names it
    in ``data.site-files``; see ``omnirad_fl.client.deployment``)."""
    source = source_of(data.dataset)
    if source.natural_split:
        return _split_site_file(data, site_id, source.site_file(data, site_id), seed)
    check_site_id(data, site_id)
    indices = site_partitions(data, seed=seed)[site_id]
    pool = pooled_train(data)
    split_seed = site_split_seed(seed, site_id)
    if pool.volumes is not None:  # slices: whole volumes to validation
        return SiteData(site_id, *split_site(pool.subset(indices), data.val_fraction, split_seed))
    train_idx, val_idx = split_train_val(indices, data.val_fraction, split_seed)
    return SiteData(site_id, pool.subset(train_idx), pool.subset(val_idx))


def training_captions(data: DataConfig, site_id: int, *, seed: int) -> list[str]:
    """The captions a site of a natural split trains on: its file's training rows, less those the
    local split keeps for validation (as ``load_site`` splits them). Validation and test captions
    are never counted into a federated vocabulary."""
    by_split = captions_by_split(Path(source_of(data.dataset).site_file(data, site_id)))
    train = by_split["train"]
    if by_split["val"]:
        return train
    # the split `split_site` makes of a file without volumes (caption files hold 2D images only)
    train_idx, _ = split_train_val(np.arange(len(train)), data.val_fraction, site_split_seed(seed, site_id))
    return [train[i] for i in train_idx]


def _split_site_file(data: DataConfig, site_id: int, path: str, seed: int) -> SiteData:
    """A natural split: the site's own file; its val split, or a local split of its train data."""
    if not path:
        raise ValueError(f"site {site_id}: data.dataset={data.dataset} but no data file was given for this site")
    splits = read_site_file(path, task_info(data), read_options(data))
    train = splits["train"]
    if "val" in splits:
        return SiteData(site_id, train, splits["val"])
    return SiteData(site_id, *split_site(train, data.val_fraction, site_split_seed(seed, site_id)))
