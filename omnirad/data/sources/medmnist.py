"""``data.dataset=<flag>``: a 2D MedMNIST dataset, or several joined by ``+`` into one pool."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from omnirad.config.schema import Config
from omnirad.data.labelled import LabelledImages
from omnirad.data.npz import load_medmnist, medmnist_task
from omnirad.data.sources.registry import DataSource, register_source
from omnirad.errors import bad_value
from omnirad.tasks import MULTI_CLASS, TaskSpec

MEDMNIST_SIZES = (28, 64, 128, 224)


def medmnist_flags() -> tuple[str, ...]:
    """The 2D MedMNIST datasets the medmnist package describes."""
    from medmnist import INFO  # imported here: the package is slow to import and often not needed

    return tuple(flag for flag in INFO if not flag.endswith("3d"))


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
    rgb = any(split.images.ndim == 4 for part in parts for split in part.values())
    pooled = {}
    for name in ("train", "val", "test"):
        images = [_as_rgb(part[name].images) if rgb else part[name].images for part in parts]
        labels = [part[name].labels + offset for part, offset in zip(parts, offsets, strict=False)]
        groups = [np.full(len(part[name].labels), g) for g, part in enumerate(parts)]
        pooled[name] = LabelledImages(np.concatenate(images), np.concatenate(labels), np.concatenate(groups))
    return pooled


def _as_rgb(images: np.ndarray) -> np.ndarray:
    return images if images.ndim == 4 else np.repeat(images[..., None], 3, axis=-1)


class MedMnistSource(DataSource):
    name = "medmnist"
    describes = "2D MedMNIST flags joined by '+' (e.g. bloodmnist, organamnist+pneumoniamnist)"

    def claims(self, dataset: str) -> bool:
        flags = medmnist_flags()
        return all(part in flags for part in dataset.split("+"))

    def check(self, cfg: Config) -> None:
        d = cfg.data
        if d.size not in MEDMNIST_SIZES:
            raise bad_value("data.size", d.size, f"a MedMNIST size: {MEDMNIST_SIZES}")
        if "+" in d.dataset and "chestmnist" in d.dataset:
            raise bad_value("data.dataset", d.dataset, "single-label datasets only in a mix (chestmnist is multi-label)")
        if d.task != MULTI_CLASS:
            raise bad_value("data.task", d.task, "the default: a MedMNIST dataset's task comes with it "
                                                 "(segmentation needs MedSegBench files)")

    def task(self, cfg: Config) -> TaskSpec:
        flags = cfg.data.dataset.split("+")
        tasks = [medmnist_task(flag) for flag in flags]
        if len(tasks) == 1:
            return tasks[0]
        names = tuple(f"{flag}:{name}" for flag, task in zip(flags, tasks, strict=True) for name in task.label_names)
        return TaskSpec(MULTI_CLASS, names)

    def _splits(self, cfg: Config) -> dict[str, LabelledImages]:
        d = cfg.data
        return _medmnist(d.root, d.dataset, d.size, d.download)

    def pool(self, cfg: Config) -> LabelledImages:
        return self._splits(cfg)["train"]

    def test_set(self, cfg: Config) -> LabelledImages | None:
        return self._splits(cfg)["test"]


register_source(MedMnistSource())
