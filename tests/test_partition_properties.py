"""Invariants every partition scheme must hold, whatever the labels, site count and seed."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omnirad.config import DataConfig
from omnirad.data.partition import PartitionError, partition_indices


def split(labels, num_sites, scheme, seed=0, groups=None, **data_keys):
    """``partition_indices`` with the data keys given by name, the rest at their defaults."""
    return partition_indices(labels, DataConfig(num_sites=num_sites, partition=scheme, **data_keys), seed=seed,
                             groups=groups)


schemes = st.sampled_from(["iid", "dirichlet", "pathological", "quantity", "modality"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    scheme=schemes,
    num_samples=st.integers(60, 400),
    num_classes=st.integers(2, 6),
    num_sites=st.integers(1, 6),
    min_size=st.integers(2, 10),
    alpha=st.floats(0.05, 5.0),
    seed=st.integers(0, 2**16),
)
def test_every_sample_once_sizes_respected_same_seed_same_split(scheme, num_samples, num_classes, num_sites,
                                                                min_size, alpha, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, num_samples)
    groups = rng.integers(0, 3, num_samples)
    kwargs = dict(alpha=alpha, seed=seed, min_site_samples=min_size, classes_per_site=2, groups=groups)
    try:
        parts = split(labels, num_sites, scheme, **kwargs)
    except PartitionError as err:
        assert "data." in str(err)  # a refusal always names the key to change
        return
    assert len(parts) == num_sites
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(num_samples))
    assert all(len(p) >= min_size for p in parts)
    again = split(labels, num_sites, scheme, **kwargs)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
