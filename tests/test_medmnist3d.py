"""MedMNIST 3D flags as ``data.dataset``: read from local files in MedMNIST's layout (never
downloaded), cut into slices that keep their volume, and split among sites, and into each site's
train and validation sets, a whole volume at a time."""

import numpy as np
import pytest

from omnirad.config import ConfigError
from omnirad.configure import load_config
from omnirad.data.npz import DataFileError
from omnirad.data.partition import PartitionError
from omnirad.data.sites import load_site, pooled_train, server_test_set, site_partitions, task_info

COUNTS = {"train": 48, "val": 6, "test": 10}


def write_3d(root, flag="organmnist3d", size=28, classes=11, counts=COUNTS, seed=0):
    """A file as the medmnist package writes a 3D flag: ``{split}_images`` (N, D, H, W) uint8
    (``<flag>.npz`` at 28 voxels, ``<flag>_64.npz`` at 64), ``{split}_labels`` (N, 1). Volume n of
    a split holds the value n in every voxel, so a slice tells which volume it came from."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in counts.items():
        arrays[f"{split}_images"] = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None],
                                                    (n, size, size, size)).copy()
        arrays[f"{split}_labels"] = rng.integers(0, classes, (n, 1))
    path = root / (f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz")
    np.savez(path, **arrays)
    return path, arrays


def config(root, **keys):
    return load_config({"data.dataset": "organmnist3d", "data.root": str(root), "data.size": 28, "data.num-sites": 3,
                        "data.min-site-samples": 5, **keys})


def test_a_3d_flag_is_a_pool_of_slices_that_keep_their_volume_label_and_id(tmp_path):
    _, arrays = write_3d(tmp_path)
    cfg = config(tmp_path, **{"data.slice-axis": 1})
    task = task_info(cfg.data)
    assert task.kind == "multi-class" and task.num_outputs == 11 and task.label_names[0] == "liver"
    pool = pooled_train(cfg.data)
    assert pool.images.shape == (48 * 28, 28, 28) and pool.images.dtype == np.uint8
    assert np.array_equal(pool.volumes, np.repeat(np.arange(48), 28))
    assert np.array_equal(pool.labels, np.repeat(arrays["train_labels"][:, 0], 28))
    assert all((pool.images[pool.volumes == v] == v).all() for v in (0, 17, 47))  # each slice is its volume's
    test = server_test_set(cfg.data)
    assert test is not None and len(test) == 10 * 28 and len(np.unique(test.volumes)) == 10


def test_the_size_picks_the_file_as_for_2d_flags_and_a_missing_file_names_its_download(tmp_path):
    write_3d(tmp_path, "nodulemnist3d", size=64, classes=2, counts={"train": 20, "val": 2, "test": 3})
    cfg = load_config({"data.dataset": "nodulemnist3d", "data.root": str(tmp_path), "data.size": 64,
                       "data.num-sites": 2, "data.min-site-samples": 5})
    pool = pooled_train(cfg.data)
    assert pool.images.shape == (20 * 64, 64, 64) and task_info(cfg.data).kind == "binary-class"
    with pytest.raises(DataFileError, match=r"nodulemnist3d.npz: file not found.*NoduleMNIST3D\(split='train', size=28"):
        pooled_train(load_config({"data.dataset": "nodulemnist3d", "data.root": str(tmp_path), "data.size": 28}).data)


def test_3d_flags_are_checked_by_name(tmp_path):
    with pytest.raises(ConfigError, match=r"data.size.*a MedMNIST 3D size: \(28, 64\)"):
        load_config({"data.dataset": "organmnist3d", "data.size": 128})
    with pytest.raises(ConfigError, match=r"data.dataset.*3D MedMNIST flags"):
        load_config({"data.dataset": "organmnist3d+bloodmnist"})  # 2D and 3D do not mix
    np.savez(tmp_path / "adrenalmnist3d.npz", **{f"{s}_images": np.zeros((4, 28, 28), np.uint8) for s in COUNTS},
             **{f"{s}_labels": np.zeros((4, 1), np.int64) for s in COUNTS})
    with pytest.raises(DataFileError, match=r"adrenalmnist3d.npz: train_images has shape \(4, 28, 28\); a 3D flag's"):
        pooled_train(load_config({"data.dataset": "adrenalmnist3d", "data.root": str(tmp_path), "data.size": 28}).data)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "pathological", "quantity"])
def test_no_volume_is_in_two_sites_or_two_splits(tmp_path, scheme):
    write_3d(tmp_path, classes=3)
    cfg = config(tmp_path, **{"data.partition": scheme, "data.alpha": 1.0, "data.val-fraction": 0.2})
    pool = pooled_train(cfg.data)
    owner: dict[int, str] = {}
    for site_id, indices in enumerate(site_partitions(cfg.data, seed=cfg.run.seed)):
        site = load_site(cfg.data, site_id, seed=cfg.run.seed)
        assert len(site.train) + len(site.val) == len(indices) and len(site.val) > 0
        assert len(site.val) % 28 == 0  # whole volumes validate
        for split, data in (("train", site.train), ("val", site.val)):
            for volume in np.unique(data.volumes):
                assert owner.setdefault(int(volume), f"{site_id}/{split}") == f"{site_id}/{split}", volume
                assert (data.volumes == volume).sum() == 28  # every slice of the volume is here
                assert (data.images[data.volumes == volume] == volume).all()  # and only its slices
    assert sorted(owner) == list(range(48)) and len(pool) == 48 * 28


def test_the_split_counts_volumes_not_slices(tmp_path):
    write_3d(tmp_path, classes=3)
    with pytest.raises(PartitionError, match=r"need 60 samples, but the pool has 48.*one of its 48 volumes"):
        site_partitions(config(tmp_path, **{"data.min-site-samples": 20}).data, seed=0)


def test_a_mix_of_3d_flags_gives_each_site_one_source(tmp_path):
    write_3d(tmp_path, "vesselmnist3d", classes=2, counts={"train": 12, "val": 2, "test": 2})
    write_3d(tmp_path, "synapsemnist3d", classes=2, counts={"train": 14, "val": 2, "test": 2}, seed=1)
    cfg = config(tmp_path, **{"data.dataset": "vesselmnist3d+synapsemnist3d", "data.num-sites": 2,
                              "data.partition": "modality", "data.slice-axis": 0})
    assert task_info(cfg.data).num_outputs == 4
    sources = []
    for site_id in range(2):
        site = load_site(cfg.data, site_id, seed=cfg.run.seed)
        sources.append({*(site.train.labels >= 2).tolist(), *(site.val.labels >= 2).tolist()})
        assert not set(site.train.volumes) & set(site.val.volumes)
    assert sorted(map(sorted, sources)) == [[False], [True]]


def test_the_study_file_writer_makes_a_pool_the_3d_source_reads(tmp_path):
    from omnirad_fl.simulations.study_files import write_medmnist3d

    path = write_medmnist3d(tmp_path, 28, sizes=(12, 2, 4))
    assert path.name == "nodulemnist3d.npz"
    cfg = load_config({"data.dataset": "nodulemnist3d", "data.root": str(tmp_path), "data.size": 28})
    pool, test = pooled_train(cfg.data), server_test_set(cfg.data)
    assert len(pool) == 12 * 28 and test is not None and len(np.unique(test.volumes)) == 4
    positive = pool.volumes[pool.labels == 1][0]
    assert (pool.images[pool.volumes == positive] == 220).any(axis=(1, 2)).sum() == 5  # the cube: 5 of 28 slices
