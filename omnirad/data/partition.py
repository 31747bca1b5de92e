"""Share one pooled dataset out among simulated hospitals, the way non-IID studies need.

Label-based schemes are delegated to Flower Datasets' partitioners (they work on in-memory arrays
through ``datasets.Dataset.from_dict``); this module adapts them to index arrays, adds the two
schemes they do not offer as such (power-law quantity skew, one imaging style per site), and turns
failures into messages that name the configuration key to change.
"""

from __future__ import annotations

import numpy as np
from datasets import Dataset
from flwr_datasets.partitioner import (
    DirichletPartitioner,
    IidPartitioner,
    Partitioner,
    PathologicalPartitioner,
    SizePartitioner,
)

SCHEMES = ("iid", "dirichlet", "pathological", "quantity", "modality")


class PartitionError(ValueError):
    """The requested split cannot be made; the message says which key to change."""


def partition_indices(
    labels: np.ndarray,
    num_sites: int,
    scheme: str,
    alpha: float = 0.5,
    seed: int = 0,
    min_site_samples: int = 20,
    classes_per_site: int = 2,
    quantity_exponent: float = 1.0,
    groups: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Sorted indices of the pooled samples for each site; every sample goes to exactly one site.

    ``labels`` are class indices (N,); for multi-label data pass one label per sample (e.g. the
    first positive one). ``groups`` (N,) is the imaging style or source dataset, for ``modality``.
    """
    if len(labels) < num_sites * min_site_samples:
        raise PartitionError(
            f"data.num-sites={num_sites} sites of at least data.min-site-samples={min_site_samples} "
            f"need {num_sites * min_site_samples} samples, but the pool has {len(labels)}"
        )
    if scheme == "modality":
        parts = _by_group(groups, num_sites, seed)
    else:
        parts = _flower_partition(labels, num_sites, scheme, alpha, seed, min_site_samples, classes_per_site,
                                  quantity_exponent)
    smallest = min(range(num_sites), key=lambda i: len(parts[i]))
    if len(parts[smallest]) < min_site_samples:
        raise PartitionError(
            f"data.partition={scheme} gave site {smallest} only {len(parts[smallest])} samples, fewer than "
            f"data.min-site-samples={min_site_samples}; lower data.num-sites or data.min-site-samples"
        )
    return [np.sort(p) for p in parts]


def _flower_partition(labels: np.ndarray, num_sites: int, scheme: str, alpha: float, seed: int,
                      min_size: int, classes_per_site: int, exponent: float) -> list[np.ndarray]:
    partitioner = _partitioner(scheme, num_sites, alpha, seed, min_size, classes_per_site, exponent, len(labels))
    # Shuffled rows, because IidPartitioner and SizePartitioner take contiguous runs of the order given.
    order = np.random.default_rng(seed).permutation(len(labels))
    partitioner.dataset = Dataset.from_dict({"label": labels[order].tolist(), "index": order.tolist()})
    try:
        parts = [np.asarray(partitioner.load_partition(i)["index"], dtype=np.int64) for i in range(num_sites)]
    except ValueError as err:
        raise PartitionError(
            f"data.partition={scheme} could not split {len(labels)} samples among {num_sites} sites ({err}); "
            "raise data.alpha or data.classes-per-site, or lower data.num-sites or data.min-site-samples"
        ) from err
    unassigned = np.setdiff1d(np.arange(len(labels)), np.concatenate(parts))
    if len(unassigned):
        raise PartitionError(
            f"data.partition={scheme}: data.classes-per-site={classes_per_site} on data.num-sites={num_sites} "
            f"sites leaves classes {sorted(set(labels[unassigned].tolist()))} with no site; raise either key"
        )
    return parts


def _partitioner(scheme: str, num_sites: int, alpha: float, seed: int, min_size: int, classes_per_site: int,
                 exponent: float, total: int) -> Partitioner:
    if scheme == "iid":
        return IidPartitioner(num_partitions=num_sites)
    if scheme == "dirichlet":
        return DirichletPartitioner(num_partitions=num_sites, partition_by="label", alpha=alpha,
                                    min_partition_size=min_size, self_balancing=False, seed=seed)
    if scheme == "pathological":
        return PathologicalPartitioner(num_partitions=num_sites, partition_by="label",
                                       num_classes_per_partition=classes_per_site,
                                       class_assignment_mode="first-deterministic", seed=seed)
    if scheme == "quantity":
        return SizePartitioner(power_law_sizes(total, num_sites, exponent, min_size, seed))
    raise PartitionError(f"data.partition: unknown scheme '{scheme}'; known: {', '.join(SCHEMES)}")


def power_law_sizes(total: int, num_sites: int, exponent: float, min_size: int, seed: int) -> list[int]:
    """Site sizes proportional to rank^-exponent (Zipf), each at least ``min_size``, summing to ``total``.

    Flower Datasets has exponential and linear size partitioners but no power law, the usual model
    of how hospital sizes vary; the sizes are then handed to its ``SizePartitioner``.
    """
    weights = np.arange(1, num_sites + 1, dtype=float) ** -exponent
    spare = max(total - num_sites * min_size, 0)
    sizes = min_size + np.floor(spare * weights / weights.sum()).astype(int)
    sizes[0] += total - sizes.sum()
    return np.random.default_rng(seed).permutation(sizes).tolist()


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
