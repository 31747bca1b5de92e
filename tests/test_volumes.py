"""Volumes as hospitals hold them (NIfTI files, DICOM series, MedMNIST 3D arrays) read through the
site file format registry: MONAI reads and windows them, they are cut into slices that keep their
volume, split by patient, every bad input named before training, and scored per volume."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from omnirad.config import ConfigError
from omnirad.configure import load_config
from omnirad.data.labelled import ReadOptions
from omnirad.data.npz import DataFileError
from omnirad.data.site_files import SITE_FILE_FORMATS, format_of, read_site_file
from omnirad.data.sites import load_site
from omnirad.data.sources.files import file_task, read_options
from omnirad.data.volumes import cut, uncut
from omnirad.metrics import task_metrics, volume_metrics
from omnirad_fl.client.cli import check_data
from omnirad_fl.client.site_config import SiteConfig
from omnirad_fl.simulations.dicom_files import write_dicom_series

TWO = file_task("binary-class", 2)


def write_nifti(path: Path, values: np.ndarray, dtype: type = np.float32) -> Path:
    """A NIfTI volume with an identity affine (already RAS), as nibabel writes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(values.astype(dtype), np.eye(4)), path)
    return path


def write_csv(folder: Path, rows: list[str], header: str = "path,label,patient") -> Path:
    path = folder / "volumes.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_nifti_volumes_are_windowed_and_cut_into_slices_that_keep_label_and_volume(tmp_path):
    rows = []
    for n in range(4):
        hu = np.full((6, 8, 5), -1000.0)  # air, below the brain window
        hu[:, :, 2] = 40.0 + 10 * n  # one slice at the window's centre and above
        write_nifti(tmp_path / f"v{n}.nii.gz", hu)
        rows.append(f"v{n}.nii.gz,{n % 2},p{n},{'val' if n == 3 else 'train'}")
    path = write_csv(tmp_path, rows, header="path,label,patient,split")
    assert format_of(path) is SITE_FILE_FORMATS["volumes"]
    splits = read_site_file(str(path), TWO, ReadOptions(16, window="brain", slice_axis=2))
    train, val = splits["train"], splits["val"]
    assert train.images.shape == (15, 16, 16) and train.images.dtype == np.uint8  # 3 volumes x 5 axial slices
    assert list(train.volumes) == [0] * 5 + [1] * 5 + [2] * 5 and list(val.volumes) == [3] * 5
    assert list(train.labels) == [0] * 5 + [1] * 5 + [0] * 5  # a volume's label on every slice
    assert train.images[2].mean() == pytest.approx(255 * 0.5, abs=1) and train.images[0].max() == 0  # level 40, width 80
    assert train.images[7].mean() == pytest.approx(255 * 0.625, abs=1)  # 50 HU
    sagittal = read_site_file(str(path), TWO, ReadOptions(16, window="brain", slice_axis=0))
    assert len(sagittal["train"]) == 3 * 6


def test_a_dicom_series_is_read_in_hounsfield_units_and_checked_without_its_header(tmp_path, capsys):
    for n in range(3):
        hu = np.full((8, 6, 4), 40.0 + 40 * n)  # 40, 80, 120 HU
        write_dicom_series(tmp_path / f"series{n}", hu, patient=f"p{n}")
    path = write_csv(tmp_path, [f"series{n},{n % 2},p{n}" for n in range(3)])
    splits = read_site_file(str(path), TWO, ReadOptions(8, window="brain"))
    slices = np.concatenate([s.images for s in splits.values()])
    volumes = np.concatenate([s.volumes for s in splits.values()])
    assert len(slices) == 12
    assert {v: int(slices[volumes == v].mean()) for v in range(3)} == {0: 128, 1: 255, 2: 255}  # RescaleIntercept applied
    site = SiteConfig()
    site.data.file, site.data.task, site.data.num_classes = str(path), "binary-class", 2
    line = check_data(site)
    assert "12 train slices" in line and "3 volumes, 3 patients; modalities: CT: 3" in line
    assert "Doe" not in line and "p1" not in line  # nothing of the header but the modality


def test_masks_are_sliced_alongside_their_volumes_for_segmentation(tmp_path):
    image = np.zeros((10, 10, 3))
    mask = np.zeros((10, 10, 3), np.uint8)
    mask[2:6, 2:6, 1] = 1  # a lesion on the middle axial slice only
    image[mask == 1] = 100
    write_nifti(tmp_path / "ct.nii.gz", image)
    write_nifti(tmp_path / "ct_mask.nii.gz", mask, np.uint8)
    path = write_csv(tmp_path, ["ct.nii.gz,ct_mask.nii.gz,train"], header="path,mask,split")
    splits = read_site_file(str(path), file_task("segmentation", 2), ReadOptions(20))
    masks = splits["train"].labels
    assert masks.shape == (3, 20, 20) and masks.sum(axis=(1, 2)).tolist() == [0, 64, 0]  # 4x4 at 2x, nearest
    images = splits["train"].images
    assert (images[1, 5:11, 5:11] == 255).all() and images[0].max() == 0  # the lesion inside, percentile-scaled


def test_data_spacing_resamples_every_volume_to_one_voxel_size(tmp_path):
    path = tmp_path / "coarse.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((8, 8, 3)).astype(np.float32), np.diag([2.0, 2.0, 4.0, 1.0])),
             path)
    write_csv(tmp_path, ["coarse.nii.gz,0,p0,train"], header="path,label,patient,split")
    cfg = load_config({"data.dataset": "files", "data.site-files": str(tmp_path / "volumes.csv"), "data.num-sites": 1,
                       "data.num-classes": 2, "data.task": "binary-class", "data.spacing": "1,1,2"})
    as_stored = read_site_file(str(tmp_path / "volumes.csv"), TWO, ReadOptions(16))["train"]
    fine = read_site_file(str(tmp_path / "volumes.csv"), TWO, read_options(cfg.data))["train"]
    assert len(as_stored) == 3 and len(fine) == 5  # 3 slices 4 mm apart span 8 mm: 5 slices 2 mm apart
    with pytest.raises(ConfigError, match="data.spacing"):
        load_config({"data.spacing": "1,1"})


def test_no_patient_has_volumes_in_two_splits(tmp_path):
    rows = []
    for n in range(60):
        write_nifti(tmp_path / f"v{n}.nii", np.full((4, 4, 2), float(n)))
        rows.append(f"v{n}.nii,{n % 2},patient-{n // 3}")  # three volumes per patient, no split column
    splits = read_site_file(str(write_csv(tmp_path, rows)), TWO, ReadOptions(8))
    assert set(splits) == {"train", "val"}
    split_of_patient: dict[int, set[str]] = {}
    for name, split in splits.items():
        for volume in np.unique(split.volumes):
            split_of_patient.setdefault(int(volume) // 3, set()).add(name)
            assert (split.volumes == volume).sum() == 2  # every slice of a volume on the same side
    assert all(len(seen) == 1 for seen in split_of_patient.values()) and len(split_of_patient) == 20


def test_without_a_validation_split_a_site_holds_out_whole_volumes(tmp_path):
    for n in range(8):
        write_nifti(tmp_path / f"v{n}.nii.gz", np.random.default_rng(n).random((4, 4, 3)))
    path = write_csv(tmp_path, [f"v{n}.nii.gz,{n % 2},p{n},train" for n in range(8)], header="path,label,patient,split")
    cfg = load_config({"data.dataset": "files", "data.site-files": str(path), "data.num-sites": 1,
                       "data.num-classes": 2, "data.task": "binary-class", "data.size": 28, "data.val-fraction": 0.25})
    site = load_site(cfg.data, 0, seed=cfg.run.seed)
    assert len(site.val) == 2 * 3 and not set(site.val.volumes) & set(site.train.volumes)


def test_every_bad_input_is_named_with_its_row_before_training(tmp_path):
    write_nifti(tmp_path / "ok.nii.gz", np.zeros((4, 4, 3)))
    write_nifti(tmp_path / "short_mask.nii.gz", np.zeros((4, 4, 2)), np.uint8)
    write_dicom_series(tmp_path / "corrupt", np.zeros((4, 4, 2)))
    (tmp_path / "corrupt" / "0001.dcm").write_bytes(b"not a DICOM file")
    (tmp_path / "empty").mkdir()
    (tmp_path / "flat.png").write_bytes(b"")
    rows = ["ok.nii.gz,0,ok.nii.gz", "missing.nii.gz,1,", "ok.nii.gz,5,", "corrupt,1,", "empty,0,",
            "flat.png,0,", "ok.nii.gz,1,short_mask.nii.gz"]
    path = write_csv(tmp_path, rows, header="path,label,mask")
    with pytest.raises(DataFileError) as err:
        read_site_file(str(path), TWO, ReadOptions(8))
    assert "volumes.csv:4: label is not a class index from 0 to 1" in str(err.value)  # labels first, before any file
    (tmp_path / "volumes.csv").write_text("\n".join(["path,label,mask", *(r.replace(",5,", ",1,") for r in rows)]) + "\n")
    with pytest.raises(DataFileError) as err:
        read_site_file(str(path), file_task("segmentation", 2), ReadOptions(8))
    text = str(err.value)
    for expected in ("volumes.csv:3: missing.nii.gz: file not found",
                     "volumes.csv:5: corrupt/0001.dcm is not a readable DICOM file (InvalidDicomError)",
                     "volumes.csv:6: empty/ is empty: no DICOM series",
                     "volumes.csv:7: flat.png is a 2D image; a site file lists volumes or 2D images, not both",
                     "volumes.csv:8: mask short_mask.nii.gz has shape (4, 4, 2), its image ok.nii.gz (4, 4, 3)",
                     "volumes.csv:4: mask missing", "8 problem(s)"):
        assert expected in text, (expected, text)
    with pytest.raises(DataFileError, match="no rows below the header"):
        (tmp_path / "none").mkdir()
        read_site_file(str(write_csv(tmp_path / "none", [], header="path,label,mask")), TWO, ReadOptions(8))


def test_medmnist_3d_arrays_are_cut_into_slices_each_sample_a_volume(tmp_path):
    rng = np.random.default_rng(0)
    volumes = rng.integers(0, 255, (5, 28, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "organmnist3d.npz", train_images=volumes[:4], train_labels=np.array([[0], [1], [2], [1]]),
             val_images=volumes[4:], val_labels=np.array([[2]]))
    splits = read_site_file(str(tmp_path / "organmnist3d.npz"), file_task("multi-class", 3), ReadOptions(32, slice_axis=0))
    train = splits["train"]
    assert train.images.shape == (4 * 28, 32, 32) and list(np.unique(train.volumes)) == [0, 1, 2, 3]
    assert list(train.labels[train.volumes == 1]) == [1] * 28 and len(splits["val"]) == 28
    np.savez(tmp_path / "mixed.npz", train_images=volumes[:4], train_labels=np.array([[0], [1], [2], [1]]),
             val_images=volumes[4, :3], val_labels=np.array([[2], [2], [2]]))
    with pytest.raises(DataFileError, match="train hold.s. volumes .N, D, H, W., val 2D images: mixed 2D/3D"):
        read_site_file(str(tmp_path / "mixed.npz"), file_task("multi-class", 3), ReadOptions(32))


def test_predicted_slices_go_back_onto_their_volumes_grid():
    mask = np.zeros((10, 6, 4), np.uint8)
    mask[2:6, 0:3, 1] = 2
    slices = cut(mask, 0)  # (10, 6, 4) cut along x: ten 6x4 slices, enlarged 2x as the encoder would see them
    enlarged = slices.repeat(2, axis=1).repeat(2, axis=2)
    assert np.array_equal(uncut(enlarged, 0, (10, 6, 4)), mask)


def test_a_volume_is_scored_by_the_mean_or_max_of_its_slices(tmp_path):
    task = file_task("binary-class", 2)
    # volume 0 (label 1): one confident positive slice, two mild negatives; volume 1 (label 0): negatives
    logits = torch.tensor([[0.0, 4.0], [0.5, 0.0], [0.5, 0.0], [2.0, 0.0], [2.0, 0.0], [1.0, 0.0]])
    labels, volumes = np.array([1, 1, 1, 0, 0, 0]), np.array([0, 0, 0, 1, 1, 1])
    mean = volume_metrics(labels, logits, task, volumes, "mean")
    assert mean["volume_accuracy"] == 1.0
    assert set(mean) == {"volume_accuracy", "volume_macro_f1", "volume_auc", "volume_ece"}  # calibration per volume too
    found = task_metrics(labels, logits, task, volumes, "max")
    assert found["accuracy"] == pytest.approx(4 / 6) and found["volume_accuracy"] == 1.0
    assert "volume_accuracy" not in task_metrics(labels, logits, task)


def test_volume_keys_are_checked_by_name():
    with pytest.raises(ConfigError, match="data.window"):
        load_config({"data.window": "liver"})
    with pytest.raises(ConfigError, match="data.slice-axis"):
        load_config({"data.slice-axis": 3})
    with pytest.raises(ConfigError, match="data.volume-score"):
        load_config({"data.volume-score": "median"})


def write_volume_site(folder: Path, kind: str, num_volumes: int, seed: int) -> Path:
    """A site's CSV of CT volumes in either format; class 1 is denser (150 HU) than class 0 (-100 HU)."""
    rng = np.random.default_rng(seed)
    rows = []
    for n in range(num_volumes):
        hu = rng.normal(-100 + 250 * (n % 2), 30, (16, 16, 4))
        name = f"{kind}{n}" if kind == "dicom" else f"{kind}{n}.nii.gz"
        if kind == "dicom":
            write_dicom_series(folder / name, hu.round(), patient=f"{folder.name}-{n}")
        else:
            write_nifti(folder / name, hu)
        rows.append(f"{name},{n % 2},{folder.name}-{n}")
    return write_csv(folder, rows)


@pytest.mark.slow
def test_two_round_federations_on_nifti_and_on_dicom_sites_score_slices_and_volumes(tmp_path, run_in_process):
    """Whole runs in this process (``run_in_process``, conftest.py; through ``flwr run`` before):
    each site reads its CSV of volumes, trains on slices, and site and server score whole volumes."""
    runs = []
    for kind in ("nifti", "dicom"):
        sites = ",".join(str(write_volume_site(tmp_path / f"{kind}-{s}", kind, 10, seed)) for seed, s in enumerate("ab"))
        test = write_volume_site(tmp_path / f"{kind}-test", kind, 6, 9)
        runs.append(f"data.dataset='files' data.site-files='{sites}' data.test-file='{test}' data.task='binary-class' "
                    "data.num-classes=2 data.size=28 data.window='abdomen' model.adapter='linear' "
                    "model.head-init='random' num-server-rounds=2 train.local-epochs=3")
    for number, run_config in enumerate(runs):
        folder = run_in_process(2, run_config, tmp_path / f"run-{number}")
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["rounds"] == 2 and summary["final"]["accuracy"] > 0.8
        assert summary["final"]["volume-accuracy"] > 0.8  # the server's 6 held-out volumes, 4 slices each
        last = json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])
        assert all("volume-accuracy" in site["evaluate"] for site in last["sites"].values())


def test_a_site_validating_on_one_volume_still_scores_it():
    found = volume_metrics(np.array([1, 1]), torch.tensor([[0.0, 2.0], [0.0, 1.0]]), TWO, np.array([4, 4]))
    assert found["volume_accuracy"] == 1.0 and found["volume_macro_f1"] == 0.5  # one class present of two
