"""What each participant sees: a site's local train/validation data, the server's test set.

In simulation every site derives its share from the same pooled dataset and the same seed, so no
data moves between processes: each one rebuilds the pool and keeps only its own partition.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from omnirad.config import DEPLOYMENT, NATURAL_SPLITS, Config, site_file_list
from omnirad.data import synthetic
from omnirad.data.npz import load_medmnist, medmnist_task, read_classification_npz, read_segmentation_npz
from omnirad.data.partition import partition_indices, split_train_val
from omnirad.tasks import MULTI_CLASS, SEGMENTATION, TaskSpec

EMBEDDED_TRAIN_SEED = 0  # fixed, so runs with different run.seed share one dataset
EMBEDDED_TEST_SEED = 1


@dataclass(frozen=True)
class LabelledImages:
    """Images as MedMNIST stores them (uint8, (N, H, W) or (N, H, W, C)) with integer labels:
    class indices, 0/1 per label (multi-label), or (N, H, W) masks (segmentation)."""

    images: np.ndarray
    labels: np.ndarray
    groups: np.ndarray | None = None  # imaging style or source dataset, for feature-skew splits
    strata: np.ndarray | None = None  # one class per sample to split by, when labels are not that

    def subset(self, indices: np.ndarray) -> LabelledImages:
        def pick(values: np.ndarray | None) -> np.ndarray | None:
            return None if values is None else values[indices]

        return LabelledImages(self.images[indices], self.labels[indices], pick(self.groups), pick(self.strata))

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class SiteData:
    site_id: int
    train: LabelledImages
    val: LabelledImages


def task_info(cfg: Config) -> TaskSpec:
    """The task of the configured dataset: classification, or segmentation of its masks."""
    d = cfg.data
    if d.dataset == "embedded":
        if d.task == SEGMENTATION:
            return TaskSpec(SEGMENTATION, tuple(synthetic.MASK_CLASSES))
        if d.label_set == "finding":
            return TaskSpec(MULTI_CLASS, tuple(synthetic.FINDING_NAMES))
        return TaskSpec(MULTI_CLASS, tuple(synthetic.CLASS_NAMES))
    if d.dataset in NATURAL_SPLITS:
        return file_task(d.task, d.num_classes)
    tasks = [medmnist_task(flag) for flag in d.dataset.split("+")]
    if len(tasks) == 1:
        return tasks[0]
    names = tuple(f"{flag}:{name}" for flag, task in zip(d.dataset.split("+"), tasks, strict=True) for name in task.label_names)
    return TaskSpec(MULTI_CLASS, names)


def file_task(kind: str, num_classes: int) -> TaskSpec:
    """The task of a site file: files carry no label names, so classes are numbered."""
    if kind == SEGMENTATION:
        return TaskSpec(SEGMENTATION, ("background", *(f"class {k}" for k in range(1, num_classes))))
    return TaskSpec(kind, tuple(str(k) for k in range(num_classes)))


@lru_cache(maxsize=4)
def _generated(num_samples: int, size: int, seed: int) -> synthetic.SyntheticSplit:
    """One generation of the embedded images, shared by every label view of them (a multi-task
    federation reads body regions, findings and masks of the same pool)."""
    return synthetic.generate(num_samples, size=size, seed=seed)


def _embedded(num_samples: int, size: int, seed: int, segmentation: bool = False, label_set: str = "region") -> LabelledImages:
    """The embedded dataset: body-region or finding labels, or lesion masks. Every view is split
    among sites by body region (``strata``), so a site holds the same images whatever it labels."""
    split = _generated(num_samples, size, seed)
    if segmentation:
        return LabelledImages(split.images, split.masks.astype(np.int64), split.modalities, split.labels)
    if label_set == "finding":
        return LabelledImages(split.images, split.findings, split.modalities, split.labels)
    return LabelledImages(split.images, split.labels, split.modalities)


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


@lru_cache(maxsize=8)
def _site_file(path: str, task: TaskSpec, size: int) -> dict[str, LabelledImages]:
    """A site's file; segmentation images and masks are resized to ``size``, where Dice is scored."""
    if not task.segmentation:
        return {name: LabelledImages(s.images, s.labels) for name, s in read_classification_npz(Path(path), task).items()}
    splits = read_segmentation_npz(Path(path), task.num_outputs)
    return {name: LabelledImages(*_resized(s.images, s.labels, size)) for name, s in splits.items()}


def _resized(images: np.ndarray, masks: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (bilinear) and masks (nearest, so classes stay classes) at ``size`` x ``size``."""
    if images.shape[1:3] == (size, size):
        return images, masks
    pixels = torch.from_numpy(images).float()
    pixels = pixels.unsqueeze(1) if pixels.ndim == 3 else pixels.permute(0, 3, 1, 2)
    pixels = nn.functional.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    pixels = pixels.round().clamp(0, 255).to(torch.uint8)
    pixels = pixels[:, 0] if images.ndim == 3 else pixels.permute(0, 2, 3, 1)
    labels = nn.functional.interpolate(torch.from_numpy(masks)[:, None].float(), size=(size, size), mode="nearest")
    return pixels.numpy(), labels[:, 0].long().numpy()


def pooled_train(cfg: Config) -> LabelledImages:
    """The training pool that a simulated split shares out among sites."""
    d = cfg.data
    if d.dataset == "embedded":
        return _embedded(d.num_train, d.size, EMBEDDED_TRAIN_SEED, d.task == SEGMENTATION, d.label_set)
    if d.dataset in NATURAL_SPLITS:
        raise ValueError(f"data.dataset={d.dataset} is a natural split: there is no pool to partition")
    return _medmnist(d.root, d.dataset, d.size, d.download)["train"]


def server_test_set(cfg: Config) -> LabelledImages | None:
    """The server's held-out test set, never shared out among sites; None when there is none."""
    d = cfg.data
    if d.dataset == "embedded":
        return _embedded(d.num_test, d.size, EMBEDDED_TEST_SEED, d.task == SEGMENTATION, d.label_set)
    if d.dataset in NATURAL_SPLITS:
        if not d.test_file:
            return None
        splits = _site_file(d.test_file, task_info(cfg), d.size)
        return splits.get("test", splits["train"])
    return _medmnist(d.root, d.dataset, d.size, d.download)["test"]


def partition_labels(data: LabelledImages) -> np.ndarray:
    """One class per sample to split by: the strata when given; else the class, the first positive
    label (multi-label), or the highest class in the mask (segmentation: 'has a lesion')."""
    if data.strata is not None:
        return data.strata
    labels = data.labels
    if labels.ndim == 3:
        return labels.reshape(len(labels), -1).max(axis=1)
    return labels if labels.ndim == 1 else labels.argmax(axis=1)


def partition_class_names(cfg: Config) -> tuple[str, ...]:
    """Names of the classes ``partition_labels`` returns."""
    if cfg.data.dataset == "embedded":
        return tuple(synthetic.CLASS_NAMES)
    return task_info(cfg).label_names


def site_partitions(cfg: Config) -> list[np.ndarray]:
    """Pooled-sample indices of every site (deterministic in ``run.seed``), computed once per
    process and split: a simulation worker serves many sites, and partitioning the pool for
    every one of them cost a 100-site run about a third of a second per new site."""
    key = (repr(cfg.data), cfg.run.seed)  # everything the split depends on
    if key not in _PARTITIONS:
        d, pool = cfg.data, pooled_train(cfg)
        if len(_PARTITIONS) >= 8:
            _PARTITIONS.pop(next(iter(_PARTITIONS)))
        _PARTITIONS[key] = partition_indices(
            partition_labels(pool), d.num_sites, d.partition, d.alpha, cfg.run.seed, d.min_site_samples,
            d.classes_per_site, d.quantity_exponent, pool.groups,
        )
    return _PARTITIONS[key]


_PARTITIONS: dict[tuple[str, int], list[np.ndarray]] = {}


def load_site(cfg: Config, site_id: int) -> SiteData:
    """Site ``site_id``'s local train and validation data. In deployment the site's own view of
    the configuration names its one file in ``data.site-files`` (see ``client.deployment``)."""
    if cfg.data.dataset == DEPLOYMENT:
        return _split_site_file(cfg, site_id, cfg.data.site_files)
    if not 0 <= site_id < cfg.data.num_sites:
        raise ValueError(f"site {site_id} does not exist: data.num-sites={cfg.data.num_sites}")
    if cfg.data.dataset == "files":
        return _split_site_file(cfg, site_id, site_file_list(cfg)[site_id])
    indices = site_partitions(cfg)[site_id]
    train_idx, val_idx = split_train_val(indices, cfg.data.val_fraction, cfg.run.seed + site_id)
    pool = pooled_train(cfg)
    return SiteData(site_id, pool.subset(train_idx), pool.subset(val_idx))


def _split_site_file(cfg: Config, site_id: int, path: str) -> SiteData:
    """A natural split: the site's own file; its val split, or a local split of its train data."""
    if not path:
        raise ValueError(f"site {site_id}: data.dataset={cfg.data.dataset} but no data file was given for this site")
    splits = _site_file(path, task_info(cfg), cfg.data.size)
    train = splits["train"]
    if "val" in splits:
        return SiteData(site_id, train, splits["val"])
    everything = np.arange(len(train))
    train_idx, val_idx = split_train_val(everything, cfg.data.val_fraction, cfg.run.seed + site_id)
    return SiteData(site_id, train.subset(train_idx), train.subset(val_idx))
