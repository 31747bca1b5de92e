"""Images as a hospital exports them: PNG, JPEG or TIFF files with a labels CSV, or one sub-folder
per class. Registered as the ``folder`` site file format, beside MedMNIST's ``.npz``.

- A CSV (``data.file: labels.csv``) names one image per row: ``path`` (relative to the CSV) and
  ``label`` (a class index, 0 to N-1), optionally ``split`` (train, val or test) and ``patient``.
- A folder (``data.file: images/``) holds one sub-folder per class, named by its index and
  optionally a name after a dash or underscore (``0-normal``, ``1_pneumonia``).

Splits are made by patient, never by image: without a ``split`` column, the patients whose id
hashes into the lowest tenth form the validation split, so no patient's images sit on both sides.
Every problem (an unreadable image, a missing or out-of-range label, a patient in two splits) is
collected and reported together, naming the file and row, before any training starts. Only pixels
and the label are read: nothing else of a file (EXIF, names, paths) reaches the cache or a log.
Classification only (binary or multi-class); multi-label and segmentation stay with ``.npz``.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from omnirad.data.labelled import LabelledImages, ReadOptions
from omnirad.data.npz import SPLITS, DataFileError
from omnirad.data.tables import csv_table
from omnirad.tasks import TaskSpec

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
CLASS_FOLDER = re.compile(r"^(\d+)(?:[-_].*)?$")
GREY_MODES = ("1", "L", "I", "I;16", "F")  # Pillow modes read as grey; every other mode is read as RGB
WIDE_MODES = ("I", "I;16", "F")  # 16-bit or float pixels: the image's own range is scaled to 0-255
VAL_SHARE = 10  # one patient in this many goes to validation when the CSV gives no split
MAX_LISTED = 20  # problems listed before "... and N more"
# The most pixels an image may claim in its header: Pillow's own warning limit (about 9459 x 9459).
# Larger claims (a 100000 x 100000 PNG of a few hundred bytes) are refused before any pixel is
# decoded, as a problem of their row.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


class ImageTooLarge(ValueError):
    pass


def is_image_folder_source(path: Path) -> bool:
    return path.is_dir() or path.suffix.lower() == ".csv"


def read_image_folder(path: Path, task: TaskSpec, options: ReadOptions) -> dict[str, LabelledImages]:
    """The splits of a labels CSV or class-folder tree, images as uint8 ``options.size`` squared (grey
    when every image is grey, RGB otherwise); ``DataFileError`` listing every problem found."""
    if task.multi_label or task.segmentation:
        raise DataFileError(f"{path}: image folders hold binary or multi-class labels; use a .npz file "
                            f"for {task.kind} data")
    rows = read_rows(path)
    problems = label_problems(rows, task.num_outputs) + patient_problems(rows)
    images = read_row_images(rows, options.size, problems)
    if problems:
        raise DataFileError(summary(path, problems))
    return stack_splits(path, rows, images, np.array([row.label for row in rows], dtype=np.int64),
                        options.needs_training)


def survey_images(path: Path, task: TaskSpec) -> str:
    """Patients and the image sizes as stored (read from each file's header), for
    ``omnirad-client --check``: mixed sizes are all resized to ``data.size`` for the encoder."""
    rows = read_rows(path)
    sizes: Counter[str] = Counter()
    for row in rows:
        try:
            with Image.open(row.file) as image:
                sizes[f"{image.width}x{image.height}"] += 1
        except Exception:  # noqa: BLE001 - an unreadable file is read_image_folder's problem to report, by row
            sizes["unreadable"] += 1
    shown = ", ".join(f"{size}: {n}" for size, n in sizes.most_common(5))
    more = f" and {len(sizes) - 5} more sizes" if len(sizes) > 5 else ""
    return f"{len({row.patient for row in rows})} patients; image sizes: {shown}{more}{outside_note(path, rows)}"


def outside_note(path: Path, rows: Sequence[Row]) -> str:
    """What ``--check`` says of rows whose files lie outside the site's data folder (the CSV's, or
    the class folders' root): allowed, since a hospital's export may name a shared image store, but
    said, since a CSV or a symbolic link could point the reader at any file the site's user can read."""
    root = (path if path.is_dir() else path.parent).resolve()
    elsewhere = [row for row in rows if not row.file.resolve().is_relative_to(root)]
    if not elsewhere:
        return ""
    return (f"; NOTE: {len(elsewhere)} of {len(rows)} files lie outside {root} (absolute paths, '..' or symbolic "
            f"links; the first: {elsewhere[0].where}): read as named; move them in if that is not intended")


def read_row_images(rows: list[Row], size: int, problems: list[str]) -> dict[int, np.ndarray]:
    """Each readable row's image by row index; a problem added, naming the row, for each missing
    or unreadable file (all are found before the caller refuses the file)."""
    images: dict[int, np.ndarray] = {}
    for index, row in enumerate(rows):
        if not row.file.is_file():
            problems.append(f"{row.where}: {row.file.name}: file not found")
            continue
        try:
            images[index] = read_image(row.file, size)
        except ImageTooLarge as err:
            problems.append(f"{row.where}: {row.file.name}: {err}")
        except (OSError, UnidentifiedImageError, ValueError) as err:
            problems.append(f"{row.where}: {row.file.name} could not be read as an image ({type(err).__name__})")
        except Exception as err:  # noqa: BLE001 - Pillow's decoders raise many kinds on a damaged file: a row's problem
            problems.append(f"{row.where}: {row.file.name} could not be read as an image ({type(err).__name__})")
    return images


def stack_splits(path: Path, rows: list[Row], images: dict[int, np.ndarray], labels: np.ndarray,
                 needs_training: bool = True) -> dict[str, LabelledImages]:
    """The rows' images and labels per split (all RGB when any image is colour); a training split is
    required unless ``needs_training`` is off (the server's test file)."""
    colour = any(image.ndim == 3 for image in images.values())
    splits: dict[str, LabelledImages] = {}
    for split in SPLITS:
        members = [i for i, row in enumerate(rows) if row.split == split]
        if members:
            pixels = np.stack([as_colour(images[i]) if colour else images[i] for i in members])
            splits[split] = LabelledImages(pixels, labels[members])
    if needs_training and "train" not in splits:
        raise DataFileError(f"{path}: no training images (every row is in another split)")
    return splits


class Row:
    """One image: its file, label (-1: unreadable), split and patient, and where it was named."""

    def __init__(self, file: Path, label: int, split: str, patient: str, where: str) -> None:
        self.file, self.label, self.split, self.patient, self.where = file, label, split, patient, where


R = TypeVar("R", bound=Row)


def read_rows(path: Path) -> list[Row]:
    if path.is_dir():
        return class_folder_rows(path)
    if not path.is_file():
        raise DataFileError(f"{path}: no such labels CSV or image folder")
    return csv_rows(path)


def class_folder_rows(root: Path) -> list[Row]:
    """One row per image file under ``root/<class>/``; each image its own patient (no ids known)."""
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    bad = [p.name for p in folders if not CLASS_FOLDER.match(p.name)]
    if bad or not folders:
        raise DataFileError(f"{root}: expected one sub-folder per class named by its index (0, 1-pneumonia, ...); "
                            f"{'found ' + ', '.join(bad[:5]) if bad else 'found none'}")
    rows = []
    for folder in folders:
        label = int(CLASS_FOLDER.match(folder.name).group(1))  # type: ignore[union-attr]
        for file in sorted(folder.rglob("*")):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                rows.append(Row(file, label, "", file.relative_to(root).as_posix(), f"{root}/{folder.name}"))
    if not rows:
        raise DataFileError(f"{root}: no image files ({', '.join(IMAGE_SUFFIXES)}) in its class folders")
    return assign_splits(rows)


def csv_rows(path: Path) -> list[Row]:
    columns, records = csv_table(path)
    missing = [c for c in ("path", "label") if c not in columns]
    if missing:
        raise DataFileError(f"{path}: missing column(s) {', '.join(missing)}; expected path,label[,split][,patient]")
    rows = []
    for number, record in enumerate(records, start=2):  # line 1 is the header
        where = f"{path}:{number}"
        label = parse_label(record.get(columns["label"]))
        split = (record.get(columns["split"]) or "").strip().lower() if "split" in columns else ""
        patient = (record.get(columns["patient"]) or "").strip() if "patient" in columns else ""
        file = path.parent / (record.get(columns["path"]) or "").strip()
        rows.append(Row(file, label, split, patient or f"row {number}", where))
    if not rows:
        raise DataFileError(f"{path}: no rows below the header")
    return rows if "split" in columns else assign_splits(rows)


def parse_label(text: str | None) -> int:
    """A class index as written; -1: empty, -2: not an integer (both reported by ``label_problems``)."""
    text = (text or "").strip()
    return int(text) if re.fullmatch(r"-?\d+", text) else -1 if not text else -2


def assign_splits(rows: list[R]) -> list[R]:
    """Train and validation by patient: the patients hashing into the lowest ``1/VAL_SHARE``
    validate (deterministic, the same on every machine), so a patient never sits on both sides."""
    for row in rows:
        digest = int.from_bytes(hashlib.sha256(row.patient.encode()).digest()[:8], "big")
        row.split = "val" if digest % VAL_SHARE == 0 else "train"
    return rows


def label_problems(rows: Sequence[Row], num_classes: int) -> list[str]:
    found = []
    for row in rows:
        if row.label == -1:
            found.append(f"{row.where}: label missing")
        elif row.label == -2 or not 0 <= row.label < num_classes:
            found.append(f"{row.where}: label is not a class index from 0 to {num_classes - 1}")
    return found + split_problems(rows)


def split_problems(rows: Sequence[Row]) -> list[str]:
    return [f"{row.where}: split {row.split!r} is not one of {', '.join(SPLITS)}" for row in rows if row.split not in SPLITS]


def patient_problems(rows: Sequence[Row]) -> list[str]:
    """A patient whose images sit in two splits would leak between training and validation."""
    splits_of: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        splits_of[row.patient].add(row.split)
    return [f"patient {patient!r} has images in more than one split ({', '.join(sorted(seen))})"
            for patient, seen in splits_of.items() if len(seen) > 1]


def read_image(file: Path, size: int) -> np.ndarray:
    """Pixels alone, as uint8 ``size`` x ``size``: grey (H, W) or RGB (H, W, 3). ``ImageTooLarge``
    for a header that claims more than ``MAX_PIXELS``, before any pixel is decoded."""
    try:
        with warnings.catch_warnings():  # between Pillow's warning limit and twice it: refused below, not warned of
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(file)
    except Image.DecompressionBombError as err:  # Pillow's own refusal, beyond twice its warning limit
        raise ImageTooLarge(f"its header claims more than {2 * MAX_PIXELS} pixels (a decompression bomb?)") from err
    with opened as image:
        if image.width * image.height > MAX_PIXELS:
            raise ImageTooLarge(f"its header claims {image.width}x{image.height} pixels, more than the {MAX_PIXELS} "
                                "a site reads (a decompression bomb?)")
        grey = image.mode in GREY_MODES
        converted = image.convert("L" if grey else "RGB")
        if image.mode in WIDE_MODES:  # 16-bit or float pixels: scale the file's own range to 0-255
            values = np.asarray(image, dtype=np.float64)
            low, high = float(values.min()), float(values.max())
            converted = Image.fromarray(((values - low) / ((high - low) or 1.0) * 255).round().astype(np.uint8))
        resized = converted.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(resized, dtype=np.uint8)


def as_colour(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)


def summary(path: Path, problems: list[str]) -> str:
    shown = problems[:MAX_LISTED]
    more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return f"{path}: {len(problems)} problem(s) found before training:\n  " + "\n  ".join(shown) + more
