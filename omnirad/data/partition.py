"""Share one pooled dataset out among simulated hospitals, the way non-IID studies need.

Label-based schemes are delegated to Flower Datasets' partitioners (they work on in-memory arrays
through ``datasets.Dataset.from_dict``); this module adapts them to index arrays, adds the two
schemes they do not offer as such (power-law quantity skew, one imaging style per site), and turns
failures into messages that name the configuration key to change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import numpy as np
from datasets import Dataset
from flwr_datasets.partitioner import (
    DirichletPartitioner,
    IidPartitioner,
    Partitioner,
    PathologicalPartitioner,
    SizePartitioner,
)

from omnirad.config.schema import DataConfig
from omnirad.data.labelled import LabelledImages, volume_labels
from omnirad.registry import Registry


class PartitionError(ValueError):
    """The requested split cannot be made; the message says which key to change."""


@dataclass(frozen=True)
class SplitRequest:
    """One split to make: the pool's labels (and imaging groups), the data keys, the seed."""

    labels: np.ndarray
    data: DataConfig
    seed: int
    groups: np.ndarray | None = None


Scheme = Callable[[SplitRequest], list[np.ndarray]]
PARTITIONS: Registry[Scheme] = Registry("data.partition")


def partition_indices(labels: np.ndarray, data: DataConfig, *, seed: int = 0,
                      groups: np.ndarray | None = None) -> list[np.ndarray]:
    """Sorted indices of the pooled samples for each site; every sample goes to exactly one site.

    ``labels`` are class indices (N,); for multi-label data pass one label per sample (e.g. the
    first positive one). ``groups`` (N,) is the imaging style or source dataset, for ``modality``.
    The scheme is ``data.partition``; sizes and skew come from the other ``data`` keys.
    """
    num_sites, min_site_samples = data.num_sites, data.min_site_samples
    if len(labels) < num_sites * min_site_samples:
        raise PartitionError(
            f"data.num-sites={num_sites} sites of at least data.min-site-samples={min_site_samples} "
            f"need {num_sites * min_site_samples} samples, but the pool has {len(labels)}"
        )
    parts = PARTITIONS[data.partition](SplitRequest(labels, data, seed, groups))
    smallest = min(range(num_sites), key=lambda i: len(parts[i]))
    if len(parts[smallest]) < min_site_samples:
        raise PartitionError(
            f"data.partition={data.partition} gave site {smallest} only {len(parts[smallest])} samples, fewer than "
            f"data.min-site-samples={min_site_samples}; lower data.num-sites or data.min-site-samples"
        )
    return [np.sort(p) for p in parts]


def partition_volumes(labels: np.ndarray, volumes: np.ndarray, data: DataConfig, *, seed: int = 0,
                      groups: np.ndarray | None = None) -> list[np.ndarray]:
    """Sorted slice indices for each site, a whole volume at a time: the scheme splits the volumes
    (each by its label, ``volume_labels``, and its first slice's group), so every slice of a volume
    goes to one site, and ``data.min-site-samples`` counts volumes."""
    ids, per_volume = volume_labels(labels, volumes)
    firsts = np.unique(volumes, return_index=True)[1]
    try:
        parts = partition_indices(per_volume, data, seed=seed, groups=None if groups is None else groups[firsts])
    except PartitionError as err:
        raise PartitionError(f"{err} (a pool of volumes is split by volume: here a sample is one of its "
                             f"{len(ids)} volumes)") from err
    return [np.flatnonzero(np.isin(volumes, ids[part])) for part in parts]


def _flower_partition(request: SplitRequest, partitioner: Partitioner) -> list[np.ndarray]:
    labels, data, seed = request.labels, request.data, request.seed
    # Shuffled rows, because IidPartitioner and SizePartitioner take contiguous runs of the order given.
    order = np.random.default_rng(seed).permutation(len(labels))
    partitioner.dataset = Dataset.from_dict({"label": labels[order].tolist(), "index": order.tolist()})
    try:
        parts = [np.asarray(partitioner.load_partition(i)["index"], dtype=np.int64) for i in range(data.num_sites)]
    except ValueError as err:
        raise PartitionError(
            f"data.partition={data.partition} could not split {len(labels)} samples among {data.num_sites} sites "
            f"({err}); raise data.alpha or data.classes-per-site, or lower data.num-sites or data.min-site-samples"
        ) from err
    unassigned = np.setdiff1d(np.arange(len(labels)), np.concatenate(parts))
    if len(unassigned):
        raise PartitionError(
            f"data.partition={data.partition}: data.classes-per-site={data.classes_per_site} on data.num-sites="
            f"{data.num_sites} sites leaves classes {sorted(set(labels[unassigned].tolist()))} with no site; "
            "raise either key"
        )
    return parts


@PARTITIONS.register("iid")
def _iid(request: SplitRequest) -> list[np.ndarray]:
    return _flower_partition(request, IidPartitioner(num_partitions=request.data.num_sites))


@PARTITIONS.register("dirichlet")
def _dirichlet(request: SplitRequest) -> list[np.ndarray]:
    d = request.data
    return _flower_partition(request, DirichletPartitioner(
        num_partitions=d.num_sites, partition_by="label", alpha=d.alpha, min_partition_size=d.min_site_samples,
        self_balancing=False, seed=request.seed))


@PARTITIONS.register("pathological")
def _pathological(request: SplitRequest) -> list[np.ndarray]:
    d = request.data
    return _flower_partition(request, PathologicalPartitioner(
        num_partitions=d.num_sites, partition_by="label", num_classes_per_partition=d.classes_per_site,
        class_assignment_mode="first-deterministic", seed=request.seed))


@PARTITIONS.register("quantity")
def _quantity(request: SplitRequest) -> list[np.ndarray]:
    d = request.data
    sizes = power_law_sizes(len(request.labels), d.num_sites, exponent=d.quantity_exponent,
                            min_size=d.min_site_samples, seed=request.seed)
    return _flower_partition(request, SizePartitioner(sizes))


@PARTITIONS.register("modality")
def _modality(request: SplitRequest) -> list[np.ndarray]:
    return _by_group(request.groups, request.data.num_sites, request.seed)


def power_law_sizes(total: int, num_sites: int, *, exponent: float, min_size: int, seed: int) -> list[int]:
    """Site sizes proportional to rank^-exponent (Zipf), each at least ``min_size``, summing to ``total``.

    Flower Datasets has exponential and linear size partitioners but no power law, the usual model
    of how hospital sizes vary; the sizes are then handed to its ``SizePartitioner``.
    """
    weights = np.arange(1, num_sites + 1, dtype=float) ** -exponent
    spare = max(total - num_sites * min_size, 0)
    sizes = min_size + np.floor(spare * weights / weights.sum()).astype(int)
    sizes[0] += total - sizes.sum()
    return cast(list[int], np.random.default_rng(seed).permutation(sizes).tolist())


def _by_group(groups: np.ndarray | None, num_sites: int, seed: int) -> list[np.ndarray]:
    """Feature skew: each site sees one imaging style (or source dataset).

    With fewer sites than groups a site holds several groups; with more, a group's samples are
    shared out at random among the sites that hold it. Written here because Flower Datasets'
    natural-id partitioners need exactly one partition per group.
    """
    if groups is None:
        raise PartitionError(
            "data.partition=modality needs imaging styles or sources: data.dataset=embedded, or MedMNIST flags "
            "joined by '+' (e.g. data.dataset=organamnist+pneumoniamnist)"
        )
    rng = np.random.default_rng(seed)
    unique = np.unique(groups)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_sites)]
    for g_index, group in enumerate(unique):
        members = rng.permutation(np.flatnonzero(groups == group))
        holders = [s for s in range(num_sites) if s % len(unique) == g_index] or [g_index % num_sites]
        for holder, chunk in zip(holders, np.array_split(members, len(holders)), strict=True):
            parts[holder].append(chunk)
    return [np.concatenate(p) if p else np.empty(0, np.int64) for p in parts]


def split_train_val(indices: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A site's local train/validation split (seeded; at least one validation sample)."""
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(indices)
    num_val = max(1, int(round(len(indices) * val_fraction)))
    return np.sort(shuffled[num_val:]), np.sort(shuffled[:num_val])


def split_site(data: LabelledImages, val_fraction: float, seed: int) -> tuple[LabelledImages, LabelledImages]:
    """A site's images as local train and validation sets; slices of volumes by whole volumes
    (``val_fraction`` of the volumes validate), so no volume sits on both sides."""
    if data.volumes is None:
        train_idx, val_idx = split_train_val(np.arange(len(data)), val_fraction, seed)
        return data.subset(train_idx), data.subset(val_idx)
    _, val_volumes = split_train_val(np.unique(data.volumes), val_fraction, seed)
    held = np.isin(data.volumes, val_volumes)
    return data.subset(np.flatnonzero(~held)), data.subset(np.flatnonzero(held))
