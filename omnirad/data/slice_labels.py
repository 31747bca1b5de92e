"""Per-slice labels of a volume: the ``slice-labels`` column of a volume CSV names, per volume, a
text file of class indices, one per line, one per slice.

Which slice a line means is fixed by the grid the slices are cut from, not by how the file was
stored: line k (from 0) labels slice k along ``data.slice-axis`` of the volume turned to RAS by
MONAI's ``Orientation``, counting from the Left (sagittal), Posterior (coronal) or Inferior
(axial) end. A NIfTI stored superior-to-inferior, or a DICOM series whatever its file order, is
labelled in that one order. ``data.spacing`` may not resample the slice axis (its component for
that axis must be 0: as stored): a resampled slice lies between acquired ones and blends them, so
no per-slice label is true of it, and nearest-neighbour mapping would invent one silently.

A volume's own label (the ``label`` column) is then its highest slice label (``volume_labels``:
"any positive slice" for a binary task), which the column may leave empty and must not contradict.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from omnirad.data.labelled import ReadOptions

SLICE_LABELS = "slice-labels"
AXIS_NAMES = ("sagittal (x)", "coronal (y)", "axial (z)")


def read_slice_labels(file: Path, num_classes: int, where: str) -> tuple[np.ndarray, list[str]]:
    """The class index on every non-empty line of ``file``, and a problem (naming the CSV row, the
    file and its line) for each line that is not one of the ``num_classes`` classes."""
    if not file.is_file():
        return np.empty(0, np.int64), [f"{where}: {SLICE_LABELS} {file.name}: file not found"]
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:  # a damaged or binary file: a problem of its row, not a crash
        line = file.read_bytes()[:err.start].count(b"\n") + 1
        return np.empty(0, np.int64), [f"{where}: {SLICE_LABELS} {file.name}:{line}: not UTF-8 text (byte {err.start})"]
    except OSError as err:
        return np.empty(0, np.int64), [f"{where}: {SLICE_LABELS} {file.name}: cannot be read "
                                       f"({err.strerror or type(err).__name__})"]
    labels, problems = [], []
    for number, text in enumerate(lines, start=1):
        text = text.strip()
        if not text:
            continue
        if not re.fullmatch(r"\d+", text) or int(text) >= num_classes:
            problems.append(f"{where}: {SLICE_LABELS} {file.name}:{number}: {text!r} is not a class index from 0 to "
                            f"{num_classes - 1}")
            continue
        labels.append(int(text))
    if not labels and not problems:
        problems.append(f"{where}: {SLICE_LABELS} {file.name} is empty: one class index per slice expected")
    return np.array(labels, np.int64), problems


def volume_label_problem(label: int, slice_labels: np.ndarray, where: str, file: Path) -> str | None:
    """A ``label`` that contradicts the slices': a volume's label is its highest slice label."""
    if label < 0 or not len(slice_labels) or label == slice_labels.max():
        return None
    return (f"{where}: label {label} but {SLICE_LABELS} {file.name} hold up to {slice_labels.max()}: a volume's "
            "label is its highest slice label (leave label empty to take it)")


def spacing_problem(csv: Path, lines: list[str], options: ReadOptions) -> str | None:
    """Per-slice labels name acquired slices: refuse a ``data.spacing`` that resamples the slice axis."""
    if not lines or not options.spacing or options.spacing[options.slice_axis] == 0:
        return None
    return (f"{csv}: line(s) {', '.join(lines)} give {SLICE_LABELS}, which label the slices as stored, but "
            f"data.spacing resamples the slice axis ({AXIS_NAMES[options.slice_axis]}) to "
            f"{options.spacing[options.slice_axis]} mm; set that component of data.spacing to 0 (as stored)")


def count_problem(where: str, file: Path, num_labels: int, num_slices: int, axis: int) -> str | None:
    """One label per slice of the RAS-oriented volume along the slice axis."""
    if num_labels == num_slices:
        return None
    return (f"{where}: {SLICE_LABELS} {file.name} has {num_labels} labels, but the volume has {num_slices} "
            f"{AXIS_NAMES[axis].split()[0]} slices (data.slice-axis={axis}, after RAS orientation)")
