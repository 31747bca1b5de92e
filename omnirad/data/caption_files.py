"""Captioned images as ROCOv2 publishes them: image files and a CSV of captions
(``caption_csv``). Registered as the ``captions`` site file format, read for
``data.task=captioning``.

Splits are made by patient as for labelled image folders, and every problem (a missing or
unreadable image, an empty caption, a patient in two splits) is reported together, naming the file
and row, before any training starts. Captions become token ids with the run's shared vocabulary
(``data.vocabulary``); the decoder learns up to ``model.caption-length`` of them.
"""

from __future__ import annotations

from pathlib import Path

from omnirad.captions import encode_captions
from omnirad.data.caption_csv import caption_rows
from omnirad.data.image_folder import patient_problems, read_row_images, stack_splits, summary
from omnirad.data.labelled import LabelledImages, ReadOptions
from omnirad.data.npz import DataFileError
from omnirad.tasks import TaskSpec


def read_caption_csv(path: Path, task: TaskSpec, options: ReadOptions) -> dict[str, LabelledImages]:
    """The splits of a caption CSV: images as uint8 ``options.size`` squared (grey when every image is
    grey), labels the captions' token ids; ``DataFileError`` listing every problem found."""
    if not task.captioning:
        raise DataFileError(f"{path}: a caption CSV is read for data.task=captioning, not {task.kind}")
    rows, captions, problems = caption_rows(path)
    problems += patient_problems(rows)
    images = read_row_images(rows, options.size, problems)
    if problems:
        raise DataFileError(summary(path, problems))
    return stack_splits(path, rows, images, encode_captions(captions, task.label_names), options.needs_training)
