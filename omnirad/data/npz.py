"""Read ``.npz`` files in MedMNIST's (classification) and MedSegBench's (segmentation) formats,
and refuse bad files clearly.

MedMNIST files hold ``{split}_images`` (uint8, (N, H, W) grey or (N, H, W, 3) RGB) and
``{split}_labels`` ((N, 1) class indices, or (N, L) 0/1 for multi-label) for the splits train,
val and test. MedSegBench files hold ``{split}_images`` and ``{split}_label``: masks of class
indices, (N, H, W). Both packages' dataset classes assert the official sample counts, so a
hospital's file or a subset would not load through them: this module reads the same formats with
numpy and checks everything before any training starts, naming the file, the key and the problem.
"""

from __future__ import annotations

import difflib
import math
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omnirad.tasks import TaskSpec

SPLITS = ("train", "val", "test")


class DataFileError(ValueError):
    """A data file is missing or malformed; the message names the file and the problem."""


@dataclass(frozen=True)
class Split:
    images: np.ndarray
    labels: np.ndarray


def medmnist_path(root: Path, flag: str, size: int) -> Path:
    """Where the medmnist package keeps a dataset: ``<flag>.npz`` at 28 px, ``<flag>_<size>.npz`` else."""
    return Path(root) / (f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz")


def medmnist_task(flag: str) -> TaskSpec:
    from medmnist import INFO

    info = INFO[flag]
    names = tuple(info["label"][key] for key in sorted(info["label"], key=int))
    return TaskSpec(info["task"], names)


def load_medmnist(root: Path, flag: str, size: int, download: bool = False) -> dict[str, Split]:
    """All three splits of a MedMNIST dataset file, validated against its task.

    With ``download`` a missing file is fetched through the medmnist package first (it needs a
    network; the project's tests and demo never do this).
    """
    import medmnist

    path = medmnist_path(root, flag, size)
    python_class = medmnist.INFO[flag]["python_class"]
    if download and not path.is_file():
        Path(root).mkdir(parents=True, exist_ok=True)
        try:
            getattr(medmnist, python_class)(split="train", size=size, download=True, root=str(root))
        except Exception as err:  # noqa: BLE001 - download errors come from urllib, torchvision and medmnist
            raise DataFileError(f"{path}: download through medmnist failed ({err}); place the file there by hand") from err
    _require_download(path, "medmnist", python_class, size)
    return read_classification_npz(path, medmnist_task(flag), required=SPLITS)


@dataclass(frozen=True)
class SegmentationSpec:
    """A segmentation task: MedSegBench's kind (binary or multi-class) and its pixel classes."""

    kind: str
    class_names: tuple[str, ...]


MEDSEGBENCH_SIZES = (128, 256, 512)


def medsegbench_path(root: Path, flag: str, size: int) -> Path:
    return Path(root) / f"{flag}_{size}.npz"


def medsegbench_spec(flag: str) -> SegmentationSpec:
    from medsegbench import INFO

    labels = INFO[flag]["pixel_labels"]
    return SegmentationSpec(INFO[flag]["task"], tuple(labels[key] for key in sorted(labels, key=int)))


def load_medsegbench(root: Path, flag: str, size: int) -> dict[str, Split]:
    """All three splits of a MedSegBench dataset file; ``Split.labels`` are the masks."""
    from medsegbench import INFO

    path = medsegbench_path(root, flag, size)
    _require_download(path, "medsegbench", INFO[flag]["python_class"], size)
    return read_segmentation_npz(path, len(medsegbench_spec(flag).class_names), required=SPLITS)


def read_segmentation_npz(path: Path, num_classes: int, required: tuple[str, ...] = ("train",)) -> dict[str, Split]:
    """The splits present in a MedSegBench-format file; masks must fit their images and classes."""
    return _read(path, "label", required, lambda where, masks, images: _checked_masks(where, masks, images.shape[1:3], num_classes))


def _checked_masks(where: str, masks: np.ndarray, image_hw: tuple[int, ...], num_classes: int) -> np.ndarray:
    if masks.ndim == 4 and masks.shape[-1] == 1:
        masks = masks[..., 0]
    if masks.ndim != 3 or masks.shape[1:] != image_hw:
        raise DataFileError(f"{where}_label has shape {masks.shape}; expected (N, {image_hw[0]}, {image_hw[1]}) like the images")
    if not np.issubdtype(masks.dtype, np.integer):
        raise DataFileError(f"{where}_label has dtype {masks.dtype}; expected integer class indices")
    bad = masks[(masks < 0) | (masks >= num_classes)]
    if len(bad):
        raise DataFileError(f"{where}_label holds {bad[0]}, out of range for {num_classes} pixel classes (0 to {num_classes - 1})")
    return masks.astype(np.int64)


def read_classification_npz(path: Path, task: TaskSpec, required: tuple[str, ...] = ("train",)) -> dict[str, Split]:
    """The splits present in a MedMNIST-format file; ``required`` ones must be there."""
    return _read(path, "labels", required, lambda where, labels, _: _checked_labels(where, labels, task))


def _read(path: Path, label_key: str, required: tuple[str, ...],
          check_labels: Callable[[str, np.ndarray, np.ndarray], np.ndarray]) -> dict[str, Split]:
    """Open, find the splits, check images and counts, then the labels with the format's own check.
    With no split required (a server's test file), an empty split is skipped, not refused."""
    path = Path(path)
    arrays = read_npz_arrays(path)
    splits = {}
    present = _splits_present(path, arrays, label_key, required)
    if not present:
        raise DataFileError(f"{path}: holds no split: expected {', '.join(f'{s}_images' for s in SPLITS)} "
                            f"with their {label_key}")
    for split in present:
        if not required and len(arrays[f"{split}_images"]) == 0:
            continue
        images, labels = _checked_images(path, split, arrays[f"{split}_images"], arrays[f"{split}_{label_key}"],
                                        label_key=label_key)
        splits[split] = Split(images, check_labels(f"{path}: {split}", labels, images))
    return splits


def _require_download(path: Path, package: str, python_class: str, size: int) -> None:
    """A missing benchmark file: say which file goes where, and the one-line download for it."""
    if not path.is_file():
        raise DataFileError(
            f"{path}: file not found. Download it once where a network is available: python -c \"import "
            f"{package}; {package}.{python_class}(split='train', size={size}, download=True, root='{path.parent}')\", "
            f"or copy {path.name} into {path.parent}/"
        )


def _splits_present(path: Path, arrays: dict[str, np.ndarray], label_key: str, required: tuple[str, ...]) -> list[str]:
    """The splits a file holds; each must have both its arrays, and ``required`` ones must be there."""
    present = [s for s in SPLITS if f"{s}_images" in arrays or f"{s}_{label_key}" in arrays]
    for split in sorted(set(required) | set(present)):
        for kind in ("images", label_key):
            _require_key(path, arrays, f"{split}_{kind}")
    return present


# What zipfile, zlib and numpy raise on a damaged archive or array (found by tests/test_fuzz_readers.py):
# a flipped flag asks for a password (RuntimeError) or an unknown compression (NotImplementedError).
DAMAGED = (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError, KeyError, zlib.error,
           RuntimeError, NotImplementedError, struct.error, SyntaxError, TypeError, OverflowError, MemoryError)


def read_npz_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of the archive, each refused by its key when it is damaged or claims more bytes
    in its header than its entry holds (a claim numpy would allocate before reading a byte)."""
    if not path.is_file():
        raise DataFileError(f"{path}: file not found")
    try:
        npz = np.load(path, allow_pickle=False)
    except DAMAGED as err:
        raise DataFileError(f"{path}: not a readable .npz file (truncated or corrupt?): {err}") from err
    arrays = {}
    with npz:
        for key in npz.files:
            try:
                _check_claim(path, npz.zip, key)
                arrays[key] = npz[key]
            except DataFileError:
                raise
            except DAMAGED as err:
                raise DataFileError(f"{path}: array '{key}' is not readable (truncated or corrupt?): "
                                    f"{type(err).__name__}: {err}") from err
    return arrays


def _check_claim(path: Path, archive: zipfile.ZipFile, key: str) -> None:
    """Refuse an array whose header claims more bytes than its archive entry holds."""
    entry = archive.getinfo(f"{key}.npy")
    with archive.open(entry) as stream:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(stream, max_header_size=10_000)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(stream, max_header_size=10_000)
        else:  # version 3 (UTF-8 field names): numpy checks it as it reads
            return
    if dtype.hasobject:
        raise DataFileError(f"{path}: array '{key}' holds Python objects (a pickle), which this reader never loads")
    claimed = math.prod(shape) * dtype.itemsize
    if claimed > entry.file_size:
        raise DataFileError(f"{path}: array '{key}' claims shape {shape} ({claimed} bytes of {dtype}), but its entry "
                            f"holds {entry.file_size} bytes: damaged or crafted")


def _require_key(path: Path, arrays: dict[str, np.ndarray], key: str) -> None:
    if key in arrays:
        return
    close = difflib.get_close_matches(key, list(arrays), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise DataFileError(f"{path}: key '{key}' is missing (keys found: {', '.join(sorted(arrays)) or 'none'}){hint}")


def _checked_images(path: Path, split: str, images: np.ndarray, labels: np.ndarray, *, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Shape, dtype and count checks shared by both formats; grey images lose a trailing 1-channel."""
    where = f"{path}: {split}"
    if len(images) == 0:
        raise DataFileError(f"{where}_images is empty: a split needs at least one image")
    if images.dtype != np.uint8:
        raise DataFileError(f"{where}_images has dtype {images.dtype}; expected uint8 (0-255) as MedMNIST stores them")
    if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] in (1, 3)) or is_volume_array(images)):
        raise DataFileError(f"{where}_images has shape {images.shape}; expected (N, H, W) or (N, H, W, 3) images, "
                            "or (N, D, H, W) volumes")
    if len(labels) != len(images):
        raise DataFileError(f"{where}_images holds {len(images)} images but {split}_{label_key} holds {len(labels)}")
    return (images[..., 0] if images.ndim == 4 and images.shape[-1] == 1 else images), labels


def is_volume_array(images: np.ndarray) -> bool:
    """(N, D, H, W) grey volumes, as MedMNIST 3D stores them (W=28 or 64), rather than (N, H, W, C)
    images with 1, 3 or (refused) 4 channels."""
    return images.ndim == 4 and images.shape[-1] > 4


def _checked_labels(where: str, labels: np.ndarray, task: TaskSpec) -> np.ndarray:
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataFileError(f"{where}_labels has dtype {labels.dtype}; expected integers")
    n = task.num_outputs
    if task.multi_label:
        if labels.ndim != 2 or labels.shape[1] != n:
            raise DataFileError(f"{where}_labels has shape {labels.shape}; expected (N, {n}) 0/1 labels")
        if not np.isin(labels, (0, 1)).all():
            raise DataFileError(f"{where}_labels holds values other than 0 and 1 (multi-label)")
        return labels.astype(np.int64)
    if labels.ndim == 2 and labels.shape[1] != 1:
        raise DataFileError(f"{where}_labels has shape {labels.shape}; expected (N,) or (N, 1) class indices")
    flat = labels.reshape(-1).astype(np.int64)
    bad = flat[(flat < 0) | (flat >= n)]
    if len(bad):
        raise DataFileError(f"{where}_labels holds {bad[0]}, out of range for {n} classes (0 to {n - 1})")
    return flat
