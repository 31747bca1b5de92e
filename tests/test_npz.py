"""MedMNIST-format files: loading, and a clear error for every kind of bad input."""

import numpy as np
import pytest

from omnirad.configure import load_config
from omnirad.data.npz import DataFileError, load_medmnist, medmnist_path, read_classification_npz
from omnirad.data.sites import load_site, pooled_train, server_test_set, task_info
from omnirad.tasks import MULTI_CLASS, MULTI_LABEL, TaskSpec

FOUR = TaskSpec(MULTI_CLASS, ("a", "b", "c", "d"))


def write_npz(path, n=(20, 6, 6), size=28, channels=0, classes=4, multilabel=0, **override):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n, strict=True):
        if count is None:
            continue
        shape = (count, size, size) + ((channels,) if channels else ())
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = (rng.integers(0, 2, (count, multilabel)) if multilabel
                                     else rng.integers(0, classes, (count, 1)))
    arrays.update(override)
    np.savez(path, **arrays)
    return path


def test_medmnist_file_names_follow_the_package():
    assert medmnist_path("d", "bloodmnist", 28).name == "bloodmnist.npz"
    assert medmnist_path("d", "bloodmnist", 64).name == "bloodmnist_64.npz"


@pytest.mark.parametrize(("flag", "channels", "kwargs"), [
    ("bloodmnist", 3, {"classes": 8}), ("pneumoniamnist", 0, {"classes": 2}),
    ("retinamnist", 3, {"classes": 5}), ("chestmnist", 0, {"multilabel": 14}),
])
def test_medmnist_tasks_load_with_their_kind(tmp_path, flag, channels, kwargs):
    write_npz(tmp_path / f"{flag}_64.npz", size=64, channels=channels, **kwargs)
    splits = load_medmnist(tmp_path, flag, 64)
    assert set(splits) == {"train", "val", "test"}
    assert splits["train"].images.shape[:3] == (20, 64, 64)
    cfg = load_config({"data.dataset": flag, "data.root": str(tmp_path), "data.num-sites": 2,
                       "data.min-site-samples": 2, "data.partition": "iid"})
    task = task_info(cfg.data)
    assert task.multi_label == (flag == "chestmnist")
    assert pooled_train(cfg.data).labels.shape == ((20, 14) if flag == "chestmnist" else (20,))
    assert len(server_test_set(cfg.data)) == 6
    site = load_site(cfg.data, 1, seed=cfg.run.seed)
    assert len(site.train) + len(site.val) == 10


def test_missing_medmnist_file_says_what_to_place_where(tmp_path):
    with pytest.raises(DataFileError, match=r"bloodmnist_64.npz: file not found.*BloodMNIST\(split='train', size=64"):
        load_medmnist(tmp_path, "bloodmnist", 64)


def test_site_file_with_train_only_gets_a_local_validation_split(tmp_path):
    path = write_npz(tmp_path / "site_a.npz", n=(30, None, None))
    assert set(read_classification_npz(path, FOUR)) == {"train"}
    cfg = load_config({"data.dataset": "files", "data.site-files": f"{path},{path}", "data.num-sites": 2,
                       "data.num-classes": 4})
    site = load_site(cfg.data, 0, seed=cfg.run.seed)
    assert len(site.train) + len(site.val) == 30 and server_test_set(cfg.data) is None


@pytest.mark.parametrize(("override", "message"), [
    ({"train_image": np.zeros((4, 28, 28), np.uint8)}, "key 'train_images' is missing.*did you mean 'train_image'"),
    ({"train_labels": np.zeros((5, 1), np.int64)}, "holds 20 images but train_labels holds 5"),
    ({"train_labels": np.full((20, 1), 4)}, "train_labels holds 4, out of range for 4 classes"),
    ({"train_labels": np.full((20, 1), -1)}, "train_labels holds -1, out of range"),
    ({"train_images": np.zeros((20, 28, 28), np.float32)}, "dtype float32; expected uint8"),
    ({"train_images": np.zeros((20, 28), np.uint8)}, r"shape \(20, 28\); expected \(N, H, W\)"),
    ({"train_images": np.zeros((20, 28, 28, 4), np.uint8)}, "expected .N, H, W. or .N, H, W, 3."),
    ({"train_images": np.zeros((0, 28, 28), np.uint8), "train_labels": np.zeros((0, 1), np.int64)}, "train_images is empty"),
    ({"train_labels": np.zeros((20, 1), np.float32)}, "train_labels has dtype float32; expected integers"),
])
def test_bad_files_are_refused_with_the_file_key_and_problem(tmp_path, override, message):
    path = write_npz(tmp_path / "bad.npz", **override)
    if "train_image" in override:
        data = dict(np.load(path))
        del data["train_images"]
        np.savez(path, **data)
    with pytest.raises(DataFileError, match=message) as err:
        read_classification_npz(path, FOUR)
    assert str(path) in str(err.value)


def test_multilabel_labels_must_be_zero_or_one(tmp_path):
    path = write_npz(tmp_path / "chest.npz", multilabel=3, train_labels=np.full((20, 3), 2))
    with pytest.raises(DataFileError, match="other than 0 and 1"):
        read_classification_npz(path, TaskSpec(MULTI_LABEL, ("x", "y", "z")))


def test_truncated_and_missing_files(tmp_path):
    path = write_npz(tmp_path / "whole.npz")
    cut = tmp_path / "cut.npz"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataFileError, match="cut.npz: not a readable .npz file"):
        read_classification_npz(cut, FOUR)
    with pytest.raises(DataFileError, match="nope.npz: file not found"):
        read_classification_npz(tmp_path / "nope.npz", FOUR)


def test_bad_dataset_configuration_is_named():
    from omnirad.config import ConfigError
    from omnirad.plan import RunPlan

    with pytest.raises(ConfigError, match="data.dataset.*bloodmnist"):
        load_config({"data.dataset": "bloodmnst"})
    with pytest.raises(ConfigError, match="data.size.*MedMNIST size"):
        load_config({"data.dataset": "bloodmnist", "data.size": 96})
    files = {"data.dataset": "files", "data.site-files": "a.npz,b.npz", "data.num-classes": 3}
    with pytest.raises(ConfigError, match="data.num-sites.*one site per file"):
        load_config({**files, "data.num-sites": 4})
    unset = load_config(files)  # the federation's size: checked against the files once it is known
    assert RunPlan.of(unset).in_federation(2).config.data.num_sites == 2
    with pytest.raises(ConfigError, match="data.num-sites': 3 .*2, one site per file"):
        RunPlan.of(unset).in_federation(3)
    with pytest.raises(ConfigError, match="data.num-classes"):
        load_config({"data.dataset": "files", "data.site-files": "a.npz", "data.num-sites": 1})


def write_seg(path, n=(12, 4, 4), size=32, classes=2, **override):
    rng = np.random.default_rng(1)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n, strict=True):
        arrays[f"{split}_images"] = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
        arrays[f"{split}_label"] = rng.integers(0, classes, (count, size, size)).astype(np.uint8)
    arrays.update(override)
    np.savez(path, **arrays)
    return path


def test_medsegbench_binary_and_multiclass_files_load(tmp_path):
    from omnirad.data.npz import load_medsegbench, medsegbench_spec, read_segmentation_npz

    spec = medsegbench_spec("kvasir")
    assert spec.kind == "binary" and spec.class_names == ("background", "foreground")
    write_seg(tmp_path / "kvasir_128.npz", size=128)
    splits = load_medsegbench(tmp_path, "kvasir", 128)
    assert splits["train"].labels.shape == (12, 128, 128) and set(np.unique(splits["train"].labels)) == {0, 1}
    multi = read_segmentation_npz(write_seg(tmp_path / "organs.npz", classes=5), num_classes=5)
    assert multi["val"].labels.max() == 4


@pytest.mark.parametrize(("override", "message"), [
    ({"train_label": np.zeros((12, 16, 16), np.uint8)}, r"train_label has shape \(12, 16, 16\); expected \(N, 32, 32\)"),
    ({"train_label": np.full((12, 32, 32), 3, np.uint8)}, "train_label holds 3, out of range for 2 pixel classes"),
    ({"train_label": np.zeros((12, 32, 32), np.float32)}, "train_label has dtype float32"),
    ({"train_label": np.zeros((7, 32, 32), np.uint8)}, "holds 12 images but train_label holds 7"),
])
def test_bad_segmentation_files_are_refused(tmp_path, override, message):
    from omnirad.data.npz import read_segmentation_npz

    path = write_seg(tmp_path / "seg.npz", **override)
    with pytest.raises(DataFileError, match=message):
        read_segmentation_npz(path, num_classes=2)


def test_missing_medsegbench_file_names_the_download(tmp_path):
    from omnirad.data.npz import load_medsegbench

    with pytest.raises(DataFileError, match=r"busi_256.npz: file not found.*download=True"):
        load_medsegbench(tmp_path, "busi", 256)


def test_a_mix_of_medmnist_datasets_gives_one_source_per_site(tmp_path):
    write_npz(tmp_path / "pneumoniamnist.npz", classes=2)
    write_npz(tmp_path / "bloodmnist.npz", channels=3, classes=8, n=(24, 6, 6))
    cfg = load_config({"data.dataset": "pneumoniamnist+bloodmnist", "data.root": str(tmp_path), "data.size": 28,
                       "data.num-sites": 2, "data.partition": "modality", "data.min-site-samples": 5})
    task = task_info(cfg.data)
    assert task.num_outputs == 10 and task.label_names[2] == "bloodmnist:basophil"
    pool = pooled_train(cfg.data)
    assert pool.images.shape == (44, 28, 28, 3) and pool.labels[20:].min() >= 2
    sites = [load_site(cfg.data, s, seed=cfg.run.seed) for s in range(2)]
    sources = [set((s.train.labels >= 2).tolist()) | set((s.val.labels >= 2).tolist()) for s in sites]
    assert sorted(map(sorted, sources)) == [[False], [True]]  # each site holds one source dataset
