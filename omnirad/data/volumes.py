"""Volumes as hospitals hold them: NIfTI files and DICOM series listed in a CSV, cut into the 2D
slices the encoder reads. Registered as the ``volumes`` site file format.

The CSV names one volume per row: ``path`` (a ``.nii``/``.nii.gz`` file, or a folder holding one
DICOM series; relative to the CSV), ``label`` (the volume's class index: every slice of the volume
gets it) and/or ``mask`` (a NIfTI label map of the same shape, sliced alongside, for segmentation),
optionally ``slice-labels`` (a file of one class index per slice, indexed on the RAS grid:
``omnirad.data.slice_labels``), ``patient`` and ``split``. MONAI reads them (``LoadImage`` with its
nibabel and pydicom readers, so DICOM rescale slope and intercept are applied: CT arrives in
Hounsfield units), turns them to RAS (``Orientation``) and windows the intensities (``data.window``:
a CT window by name, or 1st-99th percentile scaling for MR and anything without calibrated units).
``data.slice-axis`` picks the spatial axis cut into slices (after RAS: 0 sagittal, 1 coronal, 2 axial).

Splits are made by patient (the image folder's hashing; without a ``patient`` column each volume is
its own patient), never by slice, and every slice keeps its volume's id for per-volume scores.
Every problem (a missing file, a corrupt DICOM file, an empty series folder, a mask whose shape
differs from its image, an unknown label or per-slice label, a 2D image in a volume list) is collected and reported
together, naming the file and row, before any training starts. Only pixels and the configured
label are kept: MONAI uses the geometry and rescale tags to build a volume, then only its affine is
kept (predicted masks go back on its grid); the Modality tag is shown by ``omnirad-client --check``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
from pydicom import dcmread

from omnirad.data.image_folder import (
    IMAGE_SUFFIXES,
    Row,
    assign_splits,
    label_problems,
    outside_note,
    parse_label,
    patient_problems,
    split_problems,
    summary,
)
from omnirad.data.labelled import LabelledImages, ReadOptions
from omnirad.data.npz import SPLITS, DataFileError
from omnirad.data.slice_labels import (
    SLICE_LABELS,
    count_problem,
    read_slice_labels,
    spacing_problem,
    volume_label_problem,
)
from omnirad.data.tables import csv_table
from omnirad.images import resized, resized_images
from omnirad.registry import Registry
from omnirad.tasks import TaskSpec

# MONAI is imported where volumes are read, not here: importing it loads every MONAI submodule
# (seconds), and this module is imported wherever site files are, including every ClientApp process.
if TYPE_CHECKING:
    from monai.data.meta_tensor import MetaTensor

NIFTI_SUFFIXES = (".nii", ".nii.gz")
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))

Window = Callable[[torch.Tensor], torch.Tensor | np.ndarray]
WINDOWS: Registry[Callable[[], Window]] = Registry("data.window")


def ct_window(level: float, width: float) -> Callable[[], Window]:
    """A CT window (level and width in Hounsfield units) mapped to 0-1, clipped outside."""

    def window() -> Window:
        from monai.transforms.intensity.array import ScaleIntensityRange

        return ScaleIntensityRange(a_min=level - width / 2, a_max=level + width / 2, b_min=0.0, b_max=1.0, clip=True)

    return window


def percentile_window() -> Window:
    """1st to 99th percentile mapped to 0-1: MR and anything without calibrated units."""
    from monai.transforms.intensity.array import ScaleIntensityRangePercentiles

    return ScaleIntensityRangePercentiles(lower=1, upper=99, b_min=0.0, b_max=1.0, clip=True)


WINDOWS.add("percentile", percentile_window)
WINDOWS.add("brain", ct_window(40, 80))
WINDOWS.add("lung", ct_window(-600, 1500))
WINDOWS.add("abdomen", ct_window(40, 400))
WINDOWS.add("bone", ct_window(400, 1800))


class VolumeRow(Row):
    """One volume: a Row (file, label, split, patient, where), its mask and its per-slice labels'
    file (``slice_labels``), if any; ``slice_values`` holds those labels once checked."""

    def __init__(self, file: Path, label: int, split: str, patient: str, where: str, mask: Path | None,
                 slice_labels: Path | None = None) -> None:
        super().__init__(file, label, split, patient, where)
        self.mask = mask
        self.slice_labels = slice_labels
        self.slice_values: np.ndarray | None = None


@dataclass(frozen=True)
class Volume:
    """A volume's slices (uint8, (D, size, size)) and, for segmentation, their masks; its RAS grid
    (voxel-to-world affine and shape), where predicted masks are written back."""

    slices: np.ndarray
    masks: np.ndarray | None
    affine: np.ndarray
    shape: tuple[int, int, int]


def is_volume(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES) or path.is_dir()


def is_volume_csv(path: Path) -> bool:
    """A CSV with a ``mask`` column or a row naming a volume: the volume format's, not the folder's."""
    if path.suffix.lower() != ".csv" or not path.is_file():
        return False
    try:
        columns, records = csv_table(path)
    except DataFileError:
        return False
    if "mask" in columns:
        return True
    named = (path.parent / (record.get(columns.get("path", ""), "") or "").strip() for record in records)
    return "path" in columns and any(is_volume(file) and file != path.parent for file in named)


def volume_rows(path: Path, task: TaskSpec) -> list[VolumeRow]:
    """The CSV's rows; columns checked for the task (a label to classify, a mask to segment)."""
    columns, records = csv_table(path)
    needed = ("path", "mask") if task.segmentation else ("path", "label") if SLICE_LABELS not in columns else ("path",)
    missing = [c for c in needed if c not in columns]
    if missing:
        raise DataFileError(f"{path}: missing column(s) {', '.join(missing)}; expected "
                            f"path,{'mask' if task.segmentation else 'label'}[,split][,patient]"
                            f"{'' if task.segmentation else f'[,{SLICE_LABELS}]'} for {task.kind} volumes")
    rows = []
    for number, record in enumerate(records, start=2):  # line 1 is the header
        values = {name: (record.get(column) or "").strip() for name, column in columns.items()}
        label = 0 if task.segmentation else parse_label(values.get("label"))
        mask = path.parent / values["mask"] if values.get("mask") else None
        slice_labels = path.parent / values[SLICE_LABELS] if values.get(SLICE_LABELS) else None
        rows.append(VolumeRow(path.parent / values.get("path", ""), label, values.get("split", "").lower(),
                              values.get("patient") or f"row {number}", f"{path}:{number}", mask, slice_labels))
    if not rows:
        raise DataFileError(f"{path}: no rows below the header")
    return rows if "split" in columns else assign_splits(rows)


def file_problems(row: VolumeRow, segmentation: bool) -> list[str]:
    """What makes a row unreadable, found without reading pixels: missing, 2D, empty or corrupt."""
    name = row.file.name or str(row.file)
    if row.file.name.lower().endswith(IMAGE_SUFFIXES):
        return [f"{row.where}: {name} is a 2D image; a site file lists volumes or 2D images, not both (mixed 2D/3D)"]
    if not row.file.exists():
        return [f"{row.where}: {name}: file not found"]
    if not is_volume(row.file):
        return [f"{row.where}: {name} is neither a NIfTI file (.nii, .nii.gz) nor a DICOM series folder"]
    found = series_problems(row) if row.file.is_dir() else []
    if segmentation and row.mask is None:
        found.append(f"{row.where}: mask missing")
    elif row.mask is not None and not row.mask.is_file():
        found.append(f"{row.where}: mask {row.mask.name}: file not found")
    elif row.mask is not None and row.mask.stat().st_size == 0:
        found.append(f"{row.where}: mask {row.mask.name} is empty (0 bytes)")
    return found


def series_problems(row: VolumeRow) -> list[str]:
    """Every file of a DICOM series folder must be DICOM (pydicom reads the header, not the pixels)."""
    files = sorted(f for f in row.file.iterdir() if f.is_file())
    if not files:
        return [f"{row.where}: {row.file.name}/ is empty: no DICOM series"]
    found = []
    for file in files:
        try:
            dcmread(file, stop_before_pixels=True, specific_tags=["Modality"])
        except Exception as err:  # noqa: BLE001 - pydicom raises many kinds on damaged bytes (struct.error, NotImplementedError, ...)
            found.append(f"{row.where}: {row.file.name}/{file.name} is not a readable DICOM file ({type(err).__name__})")
    return found


def modality(file: Path) -> str:
    """The DICOM Modality tag of a series (the only header element shown), or ``NIfTI``."""
    if not file.is_dir():
        return "NIfTI"
    first = min(f for f in file.iterdir() if f.is_file())
    try:
        return str(dcmread(first, stop_before_pixels=True, specific_tags=["Modality"]).get("Modality", "unknown"))
    except Exception:  # noqa: BLE001 - the read reports a damaged file by its row; the survey only counts
        return "unreadable"


def load_oriented(file: Path) -> MetaTensor:
    """A volume as MONAI reads it, channel first and in RAS orientation: (1, X, Y, Z); its
    metadata goes no further than ``read_volume``, which keeps only the affine."""
    from monai.transforms.io.array import LoadImage
    from monai.transforms.spatial.array import Orientation

    reader = "PydicomReader" if file.is_dir() else "NibabelReader"
    image = LoadImage(reader=reader, image_only=True, ensure_channel_first=True)(str(file))
    return cast("MetaTensor", Orientation(axcodes="RAS", labels=RAS_LABELS)(image))


def resampled(volume: MetaTensor, spacing: tuple[float, ...], mode: str) -> MetaTensor:
    """The volume on a grid of ``spacing`` mm (MONAI ``Spacing``), so slices from scanners with
    different voxel sizes show anatomy at one scale; unchanged when no spacing is configured."""
    from monai.transforms.spatial.array import Spacing

    return cast("MetaTensor", Spacing(pixdim=spacing, mode=mode)(volume)) if spacing else volume


def cut(volume: np.ndarray, axis: int) -> np.ndarray:
    """(X, Y, Z) to slices along ``axis``: (D, H, W)."""
    return np.ascontiguousarray(np.moveaxis(volume, axis, 0))


def read_volume(row: VolumeRow, options: ReadOptions, num_classes: int, segmentation: bool) -> Volume:
    """A volume's windowed slices at ``options.size`` and, with a mask, its mask slices; a
    ``DataFileError`` naming the row when the mask does not fit."""
    image = load_oriented(row.file)
    if image.ndim != 4 or image.shape[0] != 1:
        raise DataFileError(f"{row.where}: {row.file.name} has shape {tuple(image.shape)}; expected one 3D volume")
    mask, mask_name = None, ""
    if segmentation and row.mask is not None:
        mask_name = row.mask.name
        try:  # a damaged or empty mask is the mask's problem, not its image's
            mask = load_oriented(row.mask)
        except Exception as err:  # noqa: BLE001 - MONAI's readers raise many kinds
            raise DataFileError(f"{row.where}: mask {mask_name} could not be read as a volume "
                                f"({type(err).__name__})") from err
        if mask.shape != image.shape:
            raise DataFileError(f"{row.where}: mask {mask_name} has shape {tuple(mask.shape[1:])}, its image "
                                f"{row.file.name} {tuple(image.shape[1:])}")
    image = resampled(image, options.spacing, "bilinear")
    if row.slice_values is not None and row.slice_labels is not None:
        found = count_problem(row.where, row.slice_labels, len(row.slice_values), int(image.shape[1 + options.slice_axis]),
                              options.slice_axis)
        if found:
            raise DataFileError(found)
    affine = np.asarray(image.affine, dtype=np.float64)
    grid = (int(image.shape[1]), int(image.shape[2]), int(image.shape[3]))
    windowed = WINDOWS[options.window]()(torch.as_tensor(image).float())
    slices = cut((torch.as_tensor(windowed)[0].numpy() * 255).round().clip(0, 255).astype(np.uint8), options.slice_axis)
    if mask is None:
        return Volume(resized_images(slices, options.size), None, affine, grid)
    classes = torch.as_tensor(resampled(mask, options.spacing, "nearest"))[0].round().long().numpy()
    bad = classes[(classes < 0) | (classes >= num_classes)]
    if len(bad):
        raise DataFileError(f"{row.where}: mask {mask_name} holds {bad[0]}, out of range for {num_classes} "
                            f"pixel classes (0 to {num_classes - 1})")
    images, masks = resized(slices, cut(classes, options.slice_axis), options.size)
    return Volume(images, masks, affine, grid)


def uncut(masks: np.ndarray, axis: int, shape: tuple[int, int, int]) -> np.ndarray:
    """Slices of class indices (D, size, size) back on their volume's grid (X, Y, Z), nearest
    neighbour: the inverse of ``cut`` and the resize."""
    plane = tuple(side for i, side in enumerate(shape) if i != axis)
    resized = torch.nn.functional.interpolate(torch.from_numpy(masks)[:, None].float(), size=plane, mode="nearest")
    return np.moveaxis(resized[:, 0].to(torch.uint8).numpy(), 0, axis)


def read_volume_csv(path: Path, task: TaskSpec, options: ReadOptions) -> dict[str, LabelledImages]:
    """The splits of a volume CSV as slices (uint8 ``size`` x ``size``, grey) with each slice's
    volume id; ``DataFileError`` listing every problem found before any volume is kept."""
    if task.multi_label:
        raise DataFileError(f"{path}: volumes carry one class per volume or a mask; multi-label needs a .npz file")
    rows = read_rows_checked(path, task, options)
    problems: list[str] = []
    volumes: dict[int, Volume] = {}
    for index, row in enumerate(rows):
        found = file_problems(row, task.segmentation)
        if found:
            problems += found
            continue
        try:
            volumes[index] = read_volume(row, options, task.num_outputs, task.segmentation)
        except DataFileError as err:
            problems.append(str(err))
        except Exception as err:  # noqa: BLE001 - MONAI's readers raise many kinds; each is reported by row
            problems.append(f"{row.where}: {row.file.name} could not be read as a volume ({type(err).__name__})")
    if problems:
        raise DataFileError(summary(path, problems))
    splits = {split: slices_of(rows, volumes, [i for i, row in enumerate(rows) if row.split == split], task.segmentation)
              for split in SPLITS if any(row.split == split for row in rows)}
    if options.needs_training and "train" not in splits:
        raise DataFileError(f"{path}: no training volumes (every row is in another split)")
    return splits


def read_rows_checked(path: Path, task: TaskSpec, options: ReadOptions) -> list[VolumeRow]:
    """Rows whose labels (per volume and per slice), splits and patients are sound;
    ``DataFileError`` listing every fault."""
    if not path.is_file():
        raise DataFileError(f"{path}: no such volume CSV")
    rows = volume_rows(path, task)
    problems = slice_label_problems(rows, task)
    spacing = spacing_problem(path, [row.where.rsplit(":", 1)[1] for row in rows if row.slice_labels], options)
    problems += ([spacing] if spacing else []) + \
        (split_problems(rows) if task.segmentation else label_problems(rows, task.num_outputs)) + patient_problems(rows)
    if problems:
        raise DataFileError(summary(path, problems))
    return rows


def slice_label_problems(rows: list[VolumeRow], task: TaskSpec) -> list[str]:
    """Read and check each row's per-slice labels (``omnirad.data.slice_labels``) into
    ``slice_values``; a row that gives them without a ``label`` takes the highest."""
    found = []
    for row in rows:
        if row.slice_labels is None:
            continue
        if task.segmentation:
            found.append(f"{row.where}: {SLICE_LABELS} are for classification; segmentation reads the mask")
            continue
        values, problems = read_slice_labels(row.slice_labels, task.num_outputs, row.where)
        contradiction = None if problems else volume_label_problem(row.label, values, row.where, row.slice_labels)
        found += problems + ([contradiction] if contradiction else [])
        if not problems:
            row.slice_values = values
            row.label = int(values.max()) if row.label == -1 else row.label
    return found


def slices_of(rows: list[VolumeRow], volumes: dict[int, Volume], members: list[int], segmentation: bool) -> LabelledImages:
    """Every slice of the member volumes, labelled by its per-slice label where the row gives
    them, else by its volume's label."""
    images = np.concatenate([volumes[i].slices for i in members])
    ids = np.concatenate([np.full(len(volumes[i].slices), i, np.int64) for i in members])
    if segmentation:
        labels = np.concatenate([volumes[i].masks for i in members if volumes[i].masks is not None])
    else:
        labels = np.concatenate([np.full(len(volumes[i].slices), rows[i].label, np.int64) if rows[i].slice_values is None
                                 else rows[i].slice_values for i in members])
    return LabelledImages(images, labels, volumes=ids)


def slice_volume_array(volumes: np.ndarray, labels: np.ndarray, options: ReadOptions,
                       groups: np.ndarray | None = None) -> LabelledImages:
    """uint8 volumes (N, D, H, W), as MedMNIST 3D stores them, as slices along ``options.slice_axis``
    at ``options.size``, each slice with its volume's label, group (if any) and id."""
    slices = np.concatenate([resized_images(cut(volume, options.slice_axis), options.size) for volume in volumes])
    depth = volumes.shape[1 + options.slice_axis]
    return LabelledImages(slices, np.repeat(labels, depth, axis=0),
                          None if groups is None else np.repeat(groups, depth), volumes=np.repeat(np.arange(len(volumes)), depth))


def survey(path: Path, task: TaskSpec) -> str:
    """Volumes, patients and modalities of a volume CSV, for ``omnirad-client --check``: of a DICOM
    header only the Modality tag is shown."""
    rows = volume_rows(path, task)
    modalities = Counter(modality(row.file) for row in rows)
    per_slice = sum(row.slice_labels is not None for row in rows)
    labelled = f" ({per_slice} with per-slice labels, indexed on the RAS grid)" if per_slice else ""
    return (f"{len(rows)} volumes{labelled}, {len({row.patient for row in rows})} patients; modalities: "
            + ", ".join(f"{name}: {n}" for name, n in sorted(modalities.items())) + outside_note(path, rows))
