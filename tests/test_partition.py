import numpy as np
import pytest

from omnirad.config import DataConfig
from omnirad.configure import load_config
from omnirad.data.partition import PartitionError, partition_indices, split_train_val
from omnirad.data.sites import load_site, site_partitions


def split(labels, num_sites, scheme, seed=0, groups=None, **data_keys):
    """``partition_indices`` with the data keys given by name, the rest at their defaults."""
    return partition_indices(labels, DataConfig(num_sites=num_sites, partition=scheme, **data_keys), seed=seed,
                             groups=groups)

LABELS = np.arange(1200) % 4


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_every_sample_goes_to_exactly_one_site_and_seed_fixes_the_split(scheme):
    parts = split(LABELS, 5, scheme, alpha=0.5, seed=3, min_site_samples=20)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(LABELS)))
    assert all(len(p) >= 20 for p in parts)
    again = split(LABELS, 5, scheme, alpha=0.5, seed=3, min_site_samples=20)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_small_alpha_skews_labels_more_than_iid():
    def skew(parts):
        hist = np.stack([np.bincount(LABELS[p], minlength=4) / len(p) for p in parts])
        return np.abs(hist - 0.25).sum(axis=1).mean()

    iid = split(LABELS, 4, "iid", seed=0)
    skewed = split(LABELS, 4, "dirichlet", alpha=0.1, seed=0, min_site_samples=10)
    assert skew(skewed) > skew(iid) + 0.3


def test_impossible_split_names_the_keys():
    with pytest.raises(PartitionError, match="data.min-site-samples"):
        split(LABELS[:100], 8, "iid", min_site_samples=20)


def test_train_val_split_is_disjoint_and_complete():
    train, val = split_train_val(np.arange(100, 200), 0.15, seed=0)
    assert len(val) == 15 and not set(train) & set(val) and len(train) + len(val) == 100


def test_sites_from_config_cover_the_pool_without_overlap():
    cfg = load_config({"data.num-sites": 3, "data.num-train": 300, "data.size": 32})
    parts = site_partitions(cfg.data, seed=cfg.run.seed)
    assert sum(len(p) for p in parts) == 300
    site = load_site(cfg.data, 1, seed=cfg.run.seed)
    assert len(site.train) + len(site.val) == len(parts[1])
    assert site.train.images.shape[1:] == (32, 32)
    with pytest.raises(ValueError, match="data.num-sites=3"):
        load_site(cfg.data, 3, seed=cfg.run.seed)


def test_pathological_gives_each_site_k_classes():
    parts = split(LABELS, 4, "pathological", seed=0, classes_per_site=2, min_site_samples=10)
    assert all(len(np.unique(LABELS[p])) <= 2 for p in parts)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(LABELS)))


def test_quantity_skew_follows_a_power_law_with_a_floor():
    parts = split(LABELS, 5, "quantity", seed=0, quantity_exponent=1.5, min_site_samples=30)
    sizes = sorted((len(p) for p in parts), reverse=True)
    assert sum(sizes) == len(LABELS) and sizes[-1] >= 30 and sizes[0] > 3 * sizes[-1]


def test_modality_split_gives_each_site_one_style():
    groups = (np.arange(1200) // 4) % 4
    parts = split(LABELS, 8, "modality", seed=0, groups=groups, min_site_samples=10)
    assert all(len(np.unique(groups[p])) == 1 for p in parts)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(LABELS)))
    with pytest.raises(PartitionError, match="imaging styles"):
        split(LABELS, 4, "modality", groups=None)
