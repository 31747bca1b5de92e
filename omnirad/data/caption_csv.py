"""A caption CSV's rows, read without an image or a tokenizer: which image, split, patient and
caption each row names, and what is wrong with them (``caption_files`` reads the images and tokens;
``python -m omnirad.captions`` counts the words).

The CSV has a ``caption`` column and names each image by ``path`` (relative to the CSV) or by
``id`` (ROCOv2's ``ID`` column: the file ``<id>.<png|jpg|...>`` beside the CSV or in its
``images/`` folder); optionally ``split`` (train, val or test) and ``patient``. Other columns
(ROCOv2's concept codes, for one) are ignored.
"""

from __future__ import annotations

from pathlib import Path

from omnirad.data.image_folder import IMAGE_SUFFIXES, Row, assign_splits, patient_problems, summary
from omnirad.data.npz import SPLITS, DataFileError
from omnirad.data.tables import csv_header, csv_table


def is_caption_csv(path: Path) -> bool:
    """A CSV whose header has a ``caption`` column."""
    if path.suffix.lower() != ".csv" or not path.is_file():
        return False
    return "caption" in csv_header(path)


def caption_rows(path: Path) -> tuple[list[Row], list[str], list[str]]:
    """The rows (image, split, patient, where), their captions, and the problems found."""
    columns, records = csv_table(path)
    image_column = "path" if "path" in columns else "id" if "id" in columns else ""
    if not image_column:
        raise DataFileError(f"{path}: no 'path' or 'id' column; expected path,caption or id,caption "
                            "[,split][,patient]")
    if "caption" not in columns:
        raise DataFileError(f"{path}: no 'caption' column; expected path,caption or id,caption [,split][,patient]")
    rows, captions, problems = [], [], []
    for number, record in enumerate(records, start=2):  # line 1 is the header
        where = f"{path}:{number}"
        name = (record.get(columns[image_column]) or "").strip()
        caption = (record.get(columns["caption"]) or "").strip()
        split = (record.get(columns["split"]) or "").strip().lower() if "split" in columns else ""
        patient = (record.get(columns["patient"]) or "").strip() if "patient" in columns else ""
        if not name:
            problems.append(f"{where}: {image_column} missing")
        if not caption:
            problems.append(f"{where}: caption missing")
        if "split" in columns and split not in SPLITS:
            problems.append(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
        file = path.parent / name if image_column == "path" else image_of(path.parent, name)
        rows.append(Row(file, 0, split, patient or f"row {number}", where))
        captions.append(caption)
    if not rows:
        raise DataFileError(f"{path}: no rows below the header")
    return (rows if "split" in columns else assign_splits(rows)), captions, problems


def captions_by_split(path: Path) -> dict[str, list[str]]:
    """The captions of each split in row order, as ``read_caption_csv`` keeps the rows, without
    reading an image (for a federated word count); ``DataFileError`` listing every bad row."""
    if not is_caption_csv(path):
        raise DataFileError(f"{path}: not a caption CSV (a CSV with a 'caption' column)")
    rows, captions, problems = caption_rows(path)
    problems += patient_problems(rows)
    if problems:
        raise DataFileError(summary(path, problems))
    return {split: [caption for row, caption in zip(rows, captions, strict=True) if row.split == split]
            for split in SPLITS}


def image_of(folder: Path, image_id: str) -> Path:
    """ROCOv2's naming: ``<id>.<suffix>`` beside the CSV or in ``images/``; the first that exists."""
    for place in (folder, folder / "images"):
        for suffix in IMAGE_SUFFIXES:
            if (candidate := place / f"{image_id}{suffix}").is_file():
                return candidate
    return folder / image_id
