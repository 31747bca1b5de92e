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

from omnirad.data.caption_csv import is_caption_csv
from omnirad.data.caption_files import read_caption_csv
from omnirad.data.image_folder import is_image_folder_source, read_image_folder, survey_images
from omnirad.data.labelled import LabelledImages, ReadOptions
from omnirad.data.npz import DataFileError, is_volume_array, read_classification_npz, read_segmentation_npz
from omnirad.data.volumes import is_volume_csv, read_volume_csv, slice_volume_array, survey
from omnirad.images import resized
from omnirad.registry import Registry
from omnirad.tasks import TaskSpec


@dataclass(frozen=True)
class SiteFileFormat:
    matches: Callable[[Path], bool]
    read: Callable[[Path, TaskSpec, ReadOptions], dict[str, LabelledImages]]  # (file, task, how) -> splits
    describes: str
    survey: Callable[[Path, TaskSpec], str] | None = None  # more to say in `omnirad-client --check`


SITE_FILE_FORMATS: Registry[SiteFileFormat] = Registry("data.site-files")


def read_npz(path: Path, task: TaskSpec, options: ReadOptions) -> dict[str, LabelledImages]:
    """MedMNIST (classification, 2D or 3D) or MedSegBench (segmentation) format; 3D volumes
    (MedMNIST 3D: (N, D, H, W)) are cut into slices, each sample a volume; segmentation images
    and masks are resized to ``options.size``, where Dice is scored."""
    required = ("train",) if options.needs_training else ()
    if not task.segmentation:
        splits = read_classification_npz(path, task, required)
        volumes = {name for name, s in splits.items() if is_volume_array(s.images)}
        if volumes and volumes != set(splits):
            raise DataFileError(f"{path}: {', '.join(sorted(volumes))} hold(s) volumes (N, D, H, W), "
                                f"{', '.join(sorted(set(splits) - volumes))} 2D images: mixed 2D/3D")
        return {name: slice_volume_array(s.images, s.labels, options) if name in volumes
                else LabelledImages(s.images, s.labels) for name, s in splits.items()}
    segmentation = read_segmentation_npz(path, task.num_outputs, required)
    return {name: LabelledImages(*resized(s.images, s.labels, options.size)) for name, s in segmentation.items()}


# Formats are tried in this order: a captions or volume CSV before the image folder's, which takes any CSV.
SITE_FILE_FORMATS.add("npz", SiteFileFormat(lambda path: path.suffix == ".npz", read_npz,
                                            "MedMNIST- or MedSegBench-format .npz (MedMNIST 3D volumes as slices)"))
SITE_FILE_FORMATS.add("captions", SiteFileFormat(is_caption_csv, read_caption_csv,
                                                 "a captions CSV (path or id, caption), ROCOv2-style"))
SITE_FILE_FORMATS.add("volumes", SiteFileFormat(is_volume_csv, read_volume_csv,
                                                "a CSV of NIfTI volumes or DICOM series folders (path, label or "
                                                "mask)", survey))
SITE_FILE_FORMATS.add("folder", SiteFileFormat(is_image_folder_source, read_image_folder,
                                               "a labels CSV or a folder of class sub-folders (PNG, JPEG, TIFF)",
                                               survey_images))


def format_of(path: Path) -> SiteFileFormat:
    """The registered format that reads ``path``; ``DataFileError`` naming the file otherwise."""
    for _, candidate in SITE_FILE_FORMATS.items():
        if candidate.matches(path):
            return candidate
    known = "; ".join(f.describes for _, f in SITE_FILE_FORMATS.items())
    raise DataFileError(f"{path}: not a site data file this version reads (known: {known})")


@lru_cache(maxsize=8)
def read_site_file(path: str, task: TaskSpec, options: ReadOptions) -> dict[str, LabelledImages]:
    """A site's file, read once per process by its format."""
    return format_of(Path(path)).read(Path(path), task, options)
