"""ROCOv2-style caption CSVs read through the site file registry: images by path or id, captions as
token ids of the shared vocabulary, every bad row named before training."""

import numpy as np
import pytest
from PIL import Image

from omnirad.captions import decode_captions, main, read_vocabulary
from omnirad.config import ConfigError
from omnirad.configure import load_config
from omnirad.data.labelled import ReadOptions
from omnirad.data.npz import DataFileError
from omnirad.data.site_files import format_of, read_site_file
from omnirad.data.sites import load_site, task_info

CAPTIONS = ["Chest radiograph with a mass", "CT of the head, no abnormality", "MRI of the pelvis with nodules"]


def write_site(folder, rows=None, header="id,caption,patient"):
    (folder / "images").mkdir(parents=True)
    for n in range(30):
        Image.new("L", (20, 20), 8 * n).save(folder / "images" / f"ROCO_{n:03d}.png")
    lines = rows if rows is not None else [f"ROCO_{n:03d},\"{CAPTIONS[n % 3]}\",p{n // 2}" for n in range(30)]
    path = folder / "captions.csv"
    path.write_text("\n".join([header, *lines]) + "\n")
    return path


def captioning(tmp_path, site_files: str, vocabulary) -> dict:
    return {"data.dataset": "files", "data.site-files": site_files, "data.task": "captioning",
            "data.vocabulary": str(vocabulary), "model.adapter": "caption-decoder", "data.size": 28}


def test_a_caption_csv_becomes_images_and_token_ids_of_the_shared_vocabulary(tmp_path, capsys):
    path = write_site(tmp_path / "site")
    vocabulary_file = tmp_path / "vocabulary.txt"
    assert main([str(path), "-o", str(vocabulary_file), "--min-count", "1"]) == 0
    assert "with" in read_vocabulary(vocabulary_file)
    cfg = load_config(captioning(tmp_path, str(path), vocabulary_file) | {"data.num-sites": 1})
    assert format_of(path).describes.startswith("a captions CSV")
    site = load_site(cfg.data, 0, seed=cfg.run.seed)
    assert site.train.images.shape[1:] == (28, 28) and len(site.train) + len(site.val) == 30
    text = decode_captions(np.concatenate([site.train.labels, site.val.labels]), task_info(cfg.data).label_names)
    assert set(text) == {"chest radiograph with a mass", "ct of the head , no abnormality",
                         "mri of the pelvis with nodules"}


def test_bad_rows_are_all_named_with_file_and_row(tmp_path):
    rows = ["ROCO_000,a fine caption,p0", "ROCO_001,,p1", "ROCO_999,missing image,p2", ",no id,p3"]
    path = write_site(tmp_path / "site", rows)
    vocabulary = tmp_path / "v.txt"
    vocabulary.write_text("a\nfine\ncaption\n")
    with pytest.raises(DataFileError) as err:
        read_site_file(str(path), task_info(load_config(captioning(tmp_path, str(path), vocabulary)).data), ReadOptions(16))
    message = str(err.value)
    assert "4 problem(s)" in message  # the row without an id also has no image
    assert f"{path}:3: caption missing" in message
    assert f"{path}:4: ROCO_999: file not found" in message
    assert f"{path}:5: id missing" in message


def test_captioning_from_files_needs_the_shared_vocabulary(tmp_path):
    path = write_site(tmp_path / "site")
    with pytest.raises(ConfigError, match="data.vocabulary"):
        load_config(captioning(tmp_path, str(path), tmp_path / "absent.txt"))
