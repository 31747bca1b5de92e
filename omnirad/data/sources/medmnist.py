"""``data.dataset=<flag>``: a MedMNIST dataset, or several joined by ``+`` into one pool.

2D flags (``bloodmnist``, ...) are images; 3D flags (``organmnist3d``, ...) are volumes, cut into
2D slices along ``data.slice-axis`` that keep their volume's id, so that the split among sites,
each site's validation split and the scores all work on whole volumes.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from omnirad.config.schema import DataConfig
from omnirad.data.labelled import LabelledImages, ReadOptions
from omnirad.data.npz import DataFileError, is_volume_array, load_medmnist, medmnist_path, medmnist_task
from omnirad.data.sources.registry import DataSource, register_source
from omnirad.data.volumes import slice_volume_array
from omnirad.errors import bad_value
from omnirad.tasks import MULTI_CLASS, TaskSpec

MEDMNIST_SIZES = (28, 64, 128, 224)
MEDMNIST_3D_SIZES = (28, 64)


def medmnist_flags(volumes: bool = False) -> tuple[str, ...]:
    """The 2D (or, with ``volumes``, the 3D) MedMNIST datasets the medmnist package describes."""
    from medmnist import INFO  # imported here: the package is slow to import and often not needed

    return tuple(flag for flag in INFO if flag.endswith("3d") == volumes)


@lru_cache(maxsize=2)
def _medmnist(root: str, dataset: str, size: int, download: bool = False) -> dict[str, LabelledImages]:
    """One MedMNIST dataset, or several joined by '+' into one pool.

    A mix concatenates the datasets, offsets each one's labels past the previous ones' classes
    (one joint label space), turns grey images into RGB when any part is RGB, and records the
    source dataset as each sample's group, so that ``data.partition=modality`` can give each site
    one source: the feature skew of hospitals that image different things.
    """
    parts = [load_medmnist(Path(root), flag, size, download) for flag in dataset.split("+")]
    if len(parts) == 1:
        return {name: LabelledImages(s.images, s.labels) for name, s in parts[0].items()}
    offsets = np.cumsum([0] + [medmnist_task(flag).num_outputs for flag in dataset.split("+")])
    rgb = any(split.images.ndim == 4 and not is_volume_array(split.images) for part in parts for split in part.values())
    pooled = {}
    for name in ("train", "val", "test"):
        images = [_as_rgb(part[name].images) if rgb else part[name].images for part in parts]
        labels = [part[name].labels + offset for part, offset in zip(parts, offsets, strict=False)]
        groups = [np.full(len(part[name].labels), g) for g, part in enumerate(parts)]
        pooled[name] = LabelledImages(np.concatenate(images), np.concatenate(labels), np.concatenate(groups))
    return pooled


def _as_rgb(images: np.ndarray) -> np.ndarray:
    return images if images.ndim == 4 else np.repeat(images[..., None], 3, axis=-1)


@lru_cache(maxsize=2)
def _medmnist_slices(root: str, dataset: str, size: int, slice_axis: int, download: bool = False) -> dict[str, LabelledImages]:
    """3D MedMNIST datasets (joined as ``_medmnist`` joins them) cut into slices along
    ``slice_axis``; a slice keeps its volume's label, source dataset (group) and id."""
    volumes = _medmnist.__wrapped__(root, dataset, size, download)  # not cached: only the slices are kept
    sliced = {}
    for name, split in volumes.items():
        if not is_volume_array(split.images):
            files = " or ".join(str(medmnist_path(Path(root), flag, size)) for flag in dataset.split("+"))
            raise DataFileError(f"{files}: {name}_images has shape {split.images.shape}; a 3D flag's file holds "
                                "(N, D, H, W) volumes")
        sliced[name] = slice_volume_array(split.images, split.labels, ReadOptions(size, slice_axis=slice_axis),
                                          split.groups)
    return sliced


class MedMnistSource(DataSource):
    name = "medmnist"
    describes = "2D MedMNIST flags joined by '+' (e.g. bloodmnist, organamnist+pneumoniamnist)"
    volumes = False  # 3D flags: the subclass below
    sizes: tuple[int, ...] = MEDMNIST_SIZES

    def claims(self, dataset: str) -> bool:
        flags = medmnist_flags(self.volumes)
        return all(part in flags for part in dataset.split("+"))

    def check(self, data: DataConfig) -> None:
        if data.size not in self.sizes:
            raise bad_value("data.size", data.size, f"a MedMNIST{' 3D' if self.volumes else ''} size: {self.sizes}")
        if "+" in data.dataset and "chestmnist" in data.dataset:
            raise bad_value("data.dataset", data.dataset, "single-label datasets only in a mix (chestmnist is multi-label)")
        if data.task != MULTI_CLASS:
            raise bad_value("data.task", data.task, "the default: a MedMNIST dataset's task comes with it "
                                                 "(segmentation needs MedSegBench files)")

    def task(self, data: DataConfig) -> TaskSpec:
        flags = data.dataset.split("+")
        tasks = [medmnist_task(flag) for flag in flags]
        if len(tasks) == 1:
            return tasks[0]
        names = tuple(f"{flag}:{name}" for flag, task in zip(flags, tasks, strict=True) for name in task.label_names)
        return TaskSpec(MULTI_CLASS, names)

    def _splits(self, data: DataConfig) -> dict[str, LabelledImages]:
        return _medmnist(data.root, data.dataset, data.size, data.download)

    def pool(self, data: DataConfig) -> LabelledImages:
        return self._splits(data)["train"]

    def test_set(self, data: DataConfig) -> LabelledImages | None:
        return self._splits(data)["test"]


class MedMnist3dSource(MedMnistSource):
    """3D flags: every sample a volume, read at its stored size (28 or 64 voxels a side) and sliced."""

    name = "medmnist3d"
    describes = "3D MedMNIST flags joined by '+' (e.g. organmnist3d, nodulemnist3d), sliced along data.slice-axis"
    volumes = True
    sizes = MEDMNIST_3D_SIZES

    def _splits(self, data: DataConfig) -> dict[str, LabelledImages]:
        return _medmnist_slices(data.root, data.dataset, data.size, data.slice_axis, data.download)


register_source(MedMnistSource())
register_source(MedMnist3dSource())
