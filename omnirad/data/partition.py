"""Share one pooled dataset out among simulated hospitals, the way non-IID studies need.

Partitioning is delegated to Flower Datasets' partitioners (they work on in-memory arrays through
``datasets.Dataset.from_dict``); this module only adapts them to index arrays and turns their
failures into messages that name the configuration key to change.
"""

from __future__ import annotations

import numpy as np
from datasets import Dataset
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, Partitioner


class PartitionError(ValueError):
    """The requested split cannot be made; the message says which key to change."""


def partition_indices(
    labels: np.ndarray,
    num_sites: int,
    scheme: str,
    alpha: float = 0.5,
    seed: int = 0,
    min_site_samples: int = 20,
) -> list[np.ndarray]:
    """Indices of the pooled samples for each site; every sample goes to exactly one site."""
    if len(labels) < num_sites * min_site_samples:
        raise PartitionError(
            f"data.num-sites={num_sites} sites of at least data.min-site-samples={min_site_samples} "
            f"need {num_sites * min_site_samples} samples, but the pool has {len(labels)}"
        )
    partitioner = _partitioner(scheme, num_sites, alpha, seed, min_site_samples)
    # Shuffled rows, because IidPartitioner takes contiguous shards of the order it is given.
    order = np.random.default_rng(seed).permutation(len(labels))
    partitioner.dataset = Dataset.from_dict({"label": labels[order].tolist(), "index": order.tolist()})
    try:
        parts = [np.asarray(partitioner.load_partition(i)["index"], dtype=np.int64) for i in range(num_sites)]
    except ValueError as err:
        raise PartitionError(
            f"data.partition={scheme} with data.alpha={alpha} could not give each of {num_sites} sites "
            f"at least data.min-site-samples={min_site_samples} samples ({err}); raise data.alpha, "
            "lower data.num-sites or data.min-site-samples"
        ) from err
    return [np.sort(p) for p in parts]


def _partitioner(scheme: str, num_sites: int, alpha: float, seed: int, min_size: int) -> Partitioner:
    if scheme == "iid":
        return IidPartitioner(num_partitions=num_sites)
    if scheme == "dirichlet":
        return DirichletPartitioner(
            num_partitions=num_sites,
            partition_by="label",
            alpha=alpha,
            min_partition_size=min_size,
            self_balancing=False,
            seed=seed,
        )
    raise PartitionError(f"data.partition: unknown scheme '{scheme}'; known: iid, dirichlet")


def split_train_val(indices: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A site's local train/validation split (seeded; at least one validation sample)."""
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(indices)
    num_val = max(1, int(round(len(indices) * val_fraction)))
    return np.sort(shuffled[num_val:]), np.sort(shuffled[:num_val])
