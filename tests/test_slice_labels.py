"""Per-slice labels of volumes (a ``slice-labels`` column): indexed on the RAS grid whatever the
stored orientation, checked row by row before any volume is kept, refused with a slice-axis
resampling, and a volume scored by its highest slice label."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from pydicom import dcmread

from omnirad.config import ConfigError
from omnirad.configure import load_config
from omnirad.data.labelled import ReadOptions
from omnirad.data.npz import DataFileError
from omnirad.data.site_files import read_site_file
from omnirad.data.sources.files import file_task
from omnirad.metrics import volume_metrics
from omnirad_fl.client.cli import check_data
from omnirad_fl.client.site_config import SiteConfig
from omnirad_fl.simulations.dicom_files import write_dicom_series
from tests.test_volumes import write_csv

TWO = file_task("binary-class", 2)


def write_marked(path: Path, axis: int, flipped: bool, marked: int, shape: tuple[int, int, int] = (6, 7, 5)) -> Path:
    """A NIfTI volume, air except one bright stored slice (``marked``) along ``axis``; ``flipped``
    stores that axis in the opposite direction to RAS (a negative affine entry: e.g. LAS, or an
    axial stack from head to foot), so stored slice k is RAS slice ``depth - 1 - k``."""
    values = np.full(shape, -1000.0, np.float32)
    index = [slice(None)] * 3
    index[axis] = slice(marked, marked + 1)
    values[tuple(index)] = 100.0
    affine = np.eye(4)
    affine[axis, axis] = -1.0 if flipped else 1.0
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(values, affine), path)
    return path


@pytest.mark.parametrize("axis", [0, 2])
def test_slice_labels_follow_the_ras_grid_not_the_stored_order(tmp_path, axis):
    depth = (6, 7, 5)[axis]
    labels = [0] * (depth - 1) + [1]  # RAS order: the last slice (Right / Superior end) is the positive one
    (tmp_path / "labels.txt").write_text("\n".join(map(str, labels)) + "\n")
    write_marked(tmp_path / "ras.nii.gz", axis, flipped=False, marked=depth - 1)  # stored as RAS: last stored slice
    write_marked(tmp_path / "flipped.nii.gz", axis, flipped=True, marked=0)  # stored reversed: first stored slice
    path = write_csv(tmp_path, ["ras.nii.gz,1,labels.txt,train", "flipped.nii.gz,,labels.txt,train"],
                     header="path,label,slice-labels,split")
    train = read_site_file(str(path), TWO, ReadOptions(8, window="abdomen", slice_axis=axis))["train"]
    assert list(train.labels) == labels + labels
    for volume in (0, 1):
        slices, marks = train.images[train.volumes == volume], train.labels[train.volumes == volume]
        bright = [int(k) for k in np.flatnonzero(slices.reshape(depth, -1).mean(axis=1) > 100)]
        assert bright == [depth - 1] == [int(k) for k in np.flatnonzero(marks)], volume  # the label is on the bright slice


@pytest.mark.parametrize("axis", [0, 2])
def test_a_dicom_series_is_labelled_on_the_ras_grid_whatever_its_file_order(tmp_path, axis):
    shape = (6, 7, 5)
    hu = np.full(shape, -1000.0)
    hu[(slice(0, 1) if axis == 0 else slice(None), slice(None), slice(0, 1) if axis == 2 else slice(None))] = 100.0
    folder = write_dicom_series(tmp_path / "series", hu)
    files = sorted(folder.iterdir())
    for k, file in enumerate(files):  # file 0000 (the bright one, for axis 2) now lies at the top: Superior
        ds = dcmread(file)
        ds.ImagePositionPatient = [0, 0, 2 * (len(files) - 1 - k)]
        ds.save_as(file)
    # axis 0: DICOM columns run to the patient's Left (LPS), so column 0 is the Right end: RAS's last slice
    depth = shape[axis]
    (tmp_path / "labels.txt").write_text("\n".join(["0"] * (depth - 1) + ["1"]))
    path = write_csv(tmp_path, ["series,,labels.txt,train"], header="path,label,slice-labels,split")
    train = read_site_file(str(path), TWO, ReadOptions(8, window="abdomen", slice_axis=axis))["train"]
    bright = np.flatnonzero(train.images.reshape(depth, -1).mean(axis=1) > 100)
    assert list(bright) == [depth - 1] == list(np.flatnonzero(train.labels))


def test_every_bad_slice_labels_row_is_named_with_its_line_and_file_before_any_volume_is_kept(tmp_path):
    for n in range(6):
        write_marked(tmp_path / f"v{n}.nii.gz", 2, flipped=False, marked=0)
    files = {"five.txt": "0\n1\n0\n0\n1\n", "four.txt": "0\n1\n0\n0\n", "range.txt": "0\n1\n2\n0\n0\n",
             "word.txt": "0\nyes\n0\n0\n0\n", "empty.txt": "\n"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    rows = ["v0.nii.gz,,five.txt", "v1.nii.gz,1,four.txt", "v2.nii.gz,1,range.txt", "v3.nii.gz,0,word.txt",
            "v4.nii.gz,0,five.txt", "v5.nii.gz,1,missing.txt", "v0.nii.gz,1,empty.txt"]
    path = write_csv(tmp_path, rows, header="path,label,slice-labels")
    with pytest.raises(DataFileError) as err:
        read_site_file(str(path), TWO, ReadOptions(8))
    text = str(err.value)
    for expected in ("volumes.csv:4: slice-labels range.txt:3: '2' is not a class index from 0 to 1",
                     "volumes.csv:5: slice-labels word.txt:2: 'yes' is not a class index from 0 to 1",
                     "volumes.csv:6: label 0 but slice-labels five.txt hold up to 1: a volume's label is its highest",
                     "volumes.csv:7: slice-labels missing.txt: file not found",
                     "volumes.csv:8: slice-labels empty.txt is empty", "5 problem(s)"):
        assert expected in text, (expected, text)
    assert "four.txt" not in text  # its count needs the volume: checked once the rows are sound
    path = write_csv(tmp_path, rows[:2], header="path,label,slice-labels")
    with pytest.raises(DataFileError, match=r"volumes.csv:3: slice-labels four.txt has 4 labels, but the volume has "
                                            r"5 axial slices \(data.slice-axis=2, after RAS orientation\)"):
        read_site_file(str(path), TWO, ReadOptions(8))


def test_a_slice_axis_resampling_is_refused_and_an_in_plane_one_kept(tmp_path):
    write_marked(tmp_path / "v.nii.gz", 2, flipped=True, marked=0)
    (tmp_path / "labels.txt").write_text("0\n0\n0\n0\n1\n")
    path = write_csv(tmp_path, ["v.nii.gz,,labels.txt,train"], header="path,label,slice-labels,split")
    with pytest.raises(DataFileError, match=r"line\(s\) 2 give slice-labels.*resamples the slice axis \(axial \(z\)\) "
                                            r"to 0.5 mm; set that component of data.spacing to 0"):
        read_site_file(str(path), TWO, ReadOptions(8, spacing=(0.5, 0.5, 0.5)))
    train = read_site_file(str(path), TWO, ReadOptions(8, window="abdomen", spacing=(0.5, 0.5, 0.0)))["train"]
    assert list(train.labels) == [0, 0, 0, 0, 1] and train.images[4].mean() > 100 > train.images[3].mean()
    assert load_config({"data.spacing": "0.8,0.8,0"}).data.spacing == "0.8,0.8,0"  # 0: that axis as stored
    with pytest.raises(ConfigError, match=r"data.spacing.*\(0: as stored\)"):
        load_config({"data.spacing": "0.8,0.8,-1"})


def test_a_volume_is_scored_by_its_highest_slice_label():
    # volume 0: a lesion on its middle slice only (labels 0, 1, 0); volume 1: no lesion
    labels, volumes = np.array([0, 1, 0, 0, 0, 0]), np.array([0, 0, 0, 1, 1, 1])
    logits = torch.tensor([[1.0, 0.0], [0.0, 5.0], [1.0, 0.0], [2.0, 0.0], [2.0, 0.0], [2.0, 0.0]])
    found = volume_metrics(labels, logits, TWO, volumes, "max")
    assert found["volume_accuracy"] == 1.0 and found["volume_auc"] == 1.0  # with the first slice's label: 0.5


def test_the_site_check_counts_per_slice_labels(tmp_path):
    write_marked(tmp_path / "a.nii.gz", 2, flipped=True, marked=0)
    write_marked(tmp_path / "b.nii.gz", 2, flipped=False, marked=0)
    (tmp_path / "labels.txt").write_text("1\n0\n0\n0\n0\n")
    path = write_csv(tmp_path, ["a.nii.gz,,labels.txt,p0,train", "b.nii.gz,0,,p1,train"],
                     header="path,label,slice-labels,patient,split")
    site = SiteConfig()
    site.data.file, site.data.task, site.data.num_classes = str(path), "binary-class", 2
    line = check_data(site)
    assert "2 volumes (1 with per-slice labels, indexed on the RAS grid), 2 patients" in line
    assert line.endswith("per class: 0: 9, 1: 1")
