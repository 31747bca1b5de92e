"""The file a site brings to a natural split, read by the format registered for it.

A format says which files it reads and turns one into the splits it holds (``train``, optionally
``val`` and ``test``) as ``LabelledImages``, checked before any training starts; a new format is
one module and one ``SITE_FILE_FORMATS.add`` line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from omnirad.data.caption_files import is_caption_csv, read_caption_csv
from omnirad.data.image_folder import is_image_folder_source, read_image_folder
from omnirad.data.labelled import LabelledImages
from omnirad.data.npz import DataFileError, read_classification_npz, read_segmentation_npz
from omnirad.registry import Registry
from omnirad.tasks import TaskSpec


@dataclass(frozen=True)
class SiteFileFormat:
    matches: Callable[[Path], bool]
    read: Callable[[Path, TaskSpec, int], dict[str, LabelledImages]]  # (file, task, image size) -> splits
    describes: str


SITE_FILE_FORMATS: Registry[SiteFileFormat] = Registry("data.site-files")


def read_npz(path: Path, task: TaskSpec, size: int) -> dict[str, LabelledImages]:
    """MedMNIST (classification) or MedSegBench (segmentation) format; segmentation images and
    masks are resized to ``size``, where Dice is scored."""
    if not task.segmentation:
        return {name: LabelledImages(s.images, s.labels) for name, s in read_classification_npz(path, task).items()}
    splits = read_segmentation_npz(path, task.num_outputs)
    return {name: LabelledImages(*resized(s.images, s.labels, size)) for name, s in splits.items()}


SITE_FILE_FORMATS.add("npz", SiteFileFormat(lambda path: path.suffix == ".npz", read_npz,
                                            "MedMNIST- or MedSegBench-format .npz"))
SITE_FILE_FORMATS.add("captions", SiteFileFormat(is_caption_csv, read_caption_csv,
                                                 "a captions CSV (path or id, caption), ROCOv2-style"))
SITE_FILE_FORMATS.add("folder", SiteFileFormat(is_image_folder_source, read_image_folder,
                                               "a labels CSV or a folder of class sub-folders (PNG, JPEG, TIFF)"))


def resized_images(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 images, (N, H, W) or (N, H, W, 3), at ``size`` x ``size`` (bilinear, antialiased)."""
    if images.shape[1:3] == (size, size):
        return images
    pixels = torch.from_numpy(np.ascontiguousarray(images)).float()
    pixels = pixels.unsqueeze(1) if pixels.ndim == 3 else pixels.permute(0, 3, 1, 2)
    pixels = nn.functional.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    pixels = pixels.round().clamp(0, 255).to(torch.uint8)
    return (pixels[:, 0] if images.ndim == 3 else pixels.permute(0, 2, 3, 1)).numpy()


def resized(images: np.ndarray, masks: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (bilinear) and masks (nearest, so classes stay classes) at ``size`` x ``size``."""
    if images.shape[1:3] == (size, size):
        return images, masks
    labels = nn.functional.interpolate(torch.from_numpy(masks)[:, None].float(), size=(size, size), mode="nearest")
    return resized_images(images, size), labels[:, 0].long().numpy()


def format_of(path: Path) -> SiteFileFormat:
    """The registered format that reads ``path``; ``DataFileError`` naming the file otherwise."""
    for _, candidate in SITE_FILE_FORMATS.items():
        if candidate.matches(path):
            return candidate
    known = "; ".join(f.describes for _, f in SITE_FILE_FORMATS.items())
    raise DataFileError(f"{path}: not a site data file this version reads (known: {known})")


@lru_cache(maxsize=8)
def read_site_file(path: str, task: TaskSpec, size: int) -> dict[str, LabelledImages]:
    """A site's file, read once per process by its format."""
    return format_of(Path(path)).read(Path(path), task, size)
