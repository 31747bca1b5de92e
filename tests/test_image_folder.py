"""A site's images as a hospital exports them (PNG, JPEG, TIFF with a labels CSV, or a folder per
class) read through the site file format registry: splits by patient, every problem named with its
file and row before training, and only pixels and labels read."""

import numpy as np
import pytest
from PIL import Image

from omnirad.configure import load_config
from omnirad.data.labelled import ReadOptions
from omnirad.data.npz import DataFileError
from omnirad.data.site_files import format_of, read_site_file
from omnirad.data.sites import load_site
from omnirad.data.sources.files import file_task
from omnirad_fl.client.cli import check_data
from omnirad_fl.client.site_config import SiteConfig

THREE = file_task("multi-class", 3)


def write_image(path, value: int, mode: str = "L", size: int = 20):
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        Image.fromarray(np.full((size, size), value * 200, np.uint16)).save(path)
    else:
        Image.new(mode, (size, size), value if mode == "L" else (value, 0, 0)).save(path)
    return path


def write_csv(folder, rows: list[str], header: str = "path,label,patient"):
    path = folder / "labels.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_a_labels_csv_is_split_by_patient_and_read_as_pixels(tmp_path):
    rows = []
    for n in range(60):
        patient = f"p{n // 3}"  # three images per patient
        mode, suffix = ("RGB", "jpg") if n == 5 else ("I;16", "tif") if n == 7 else ("L", "png")
        write_image(tmp_path / "img" / f"{n}.{suffix}", 10 * (n % 3), mode)
        rows.append(f"img/{n}.{suffix},{n % 3},{patient}")
    path = write_csv(tmp_path, rows)
    assert format_of(path) is format_of(tmp_path)  # the CSV and a folder: the same registered format
    splits = read_site_file(str(path), THREE, ReadOptions(16))
    assert set(splits) == {"train", "val"} and len(splits["train"]) + len(splits["val"]) == 60
    assert splits["train"].images.shape[1:] == (16, 16, 3) and splits["train"].images.dtype == np.uint8  # one RGB image
    assert 0 < len(splits["val"]) < 30 and len(splits["val"]) % 3 == 0  # whole patients only
    labels = np.concatenate([splits["train"].labels, splits["val"].labels])
    assert sorted(np.bincount(labels)) == [20, 20, 20]


def test_a_patient_never_sits_in_two_splits(tmp_path):
    rows = [f"{n}.png,{n % 2},p{n // 4}" for n in range(200)]
    for n in range(200):
        write_image(tmp_path / f"{n}.png", n % 250)
    splits = read_site_file(str(write_csv(tmp_path, rows)), file_task("binary-class", 2), ReadOptions(8))
    pixel_of = {int(splits[s].images[i, 0, 0]): s for s in splits for i in range(len(splits[s]))}
    split_of_patient: dict[int, set[str]] = {}
    for n in range(200):
        split_of_patient.setdefault(n // 4, set()).add(pixel_of[n % 250])
    assert all(len(seen) == 1 for seen in split_of_patient.values())
    assert {"train", "val"} == {s for seen in split_of_patient.values() for s in seen}


def test_class_folders_give_the_labels(tmp_path):
    for label, name in enumerate(["0-normal", "1_benign", "2"]):
        for n in range(5):
            write_image(tmp_path / "images" / name / f"{n}.png", 40 * label)
    splits = read_site_file(str(tmp_path / "images"), THREE, ReadOptions(8))
    everything = np.concatenate([s.labels for s in splits.values()])
    assert sorted(np.bincount(everything)) == [5, 5, 5]
    images = np.concatenate([s.images for s in splits.values()])
    labels = everything
    assert all(int(images[i, 0, 0]) == 40 * labels[i] for i in range(len(labels)))  # each image its folder's label


def test_every_problem_is_named_with_its_row_before_training(tmp_path):
    write_image(tmp_path / "ok.png", 1)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    rows = ["ok.png,0,train,a", "broken.png,1,train,b", "missing.png,1,train,c", "ok.png,,train,d", "ok.png,7,train,e",
            "ok.png,x,train,f", "ok.png,1,holdout,g", "ok.png,1,train,h", "ok.png,1,val,h"]
    path = write_csv(tmp_path, rows, header="path,label,split,patient")
    with pytest.raises(DataFileError) as err:
        read_site_file(str(path), THREE, ReadOptions(8))
    text = str(err.value)
    for expected in ("labels.csv:3: broken.png could not be read as an image", "labels.csv:4: missing.png: file not found",
                     "labels.csv:5: label missing", "labels.csv:6: label is not a class index from 0 to 2",
                     "labels.csv:7: label is not a class index", "labels.csv:8: split 'holdout' is not one of",
                     "patient 'h' has images in more than one split (train, val)", "7 problem(s)"):
        assert expected in text, (expected, text)
    with pytest.raises(DataFileError, match="missing column.s. label"):
        read_site_file(str(write_csv(tmp_path, ["ok.png"], header="path")), THREE, ReadOptions(8))
    (tmp_path / "flat").mkdir()
    write_image(tmp_path / "flat" / "stray" / "a.png", 1)
    with pytest.raises(DataFileError, match="one sub-folder per class.*found stray"):
        read_site_file(str(tmp_path / "flat"), THREE, ReadOptions(8))


def test_a_simulated_natural_split_and_the_sites_data_check_read_folders(tmp_path):
    for site in "ab":
        for n in range(12):
            write_image(tmp_path / site / str(n % 3) / f"{n}.png", n, size=40 if n == 11 else 20)
    cfg = load_config({"data.dataset": "files", "data.site-files": f"{tmp_path / 'a'},{tmp_path / 'b'}",
                       "data.num-sites": 2, "data.num-classes": 3, "data.size": 28})
    site = load_site(cfg.data, 1, seed=cfg.run.seed)
    assert len(site.train) + len(site.val) == 12 and site.train.images.shape[1:] == (28, 28)
    site_file = SiteConfig()
    site_file.data.file, site_file.data.task, site_file.data.num_classes = str(tmp_path / "a"), "multi-class", 3
    report = check_data(site_file)
    assert report.endswith("per class: 0: 4, 1: 4, 2: 4")
    assert "image sizes: 20x20: 11, 40x40: 1" in report
