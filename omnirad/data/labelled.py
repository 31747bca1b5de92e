"""The images a participant holds, with their labels, as every data source returns them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LabelledImages:
    """Images as MedMNIST stores them (uint8, (N, H, W) or (N, H, W, C)) with integer labels:
    class indices, 0/1 per label (multi-label), or (N, H, W) masks (segmentation)."""

    images: np.ndarray
    labels: np.ndarray
    groups: np.ndarray | None = None  # imaging style or source dataset, for feature-skew splits
    strata: np.ndarray | None = None  # one class per sample to split by, when labels are not that
    volumes: np.ndarray | None = None  # the volume each slice was cut from, for per-volume scores

    def subset(self, indices: np.ndarray) -> LabelledImages:
        def pick(values: np.ndarray | None) -> np.ndarray | None:
            return None if values is None else values[indices]

        return LabelledImages(self.images[indices], self.labels[indices], pick(self.groups), pick(self.strata),
                              pick(self.volumes))

    def __len__(self) -> int:
        return len(self.labels)


def volume_labels(labels: np.ndarray, volumes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each volume's id and label: the highest label among its slices (per label, for multi-label).
    That is the volume's own label when every slice carries it; with per-slice labels it is the
    volume's worst finding ("any positive slice", for a binary task)."""
    ids = np.unique(volumes)
    return ids, np.stack([np.asarray(labels)[volumes == v].max(axis=0) for v in ids])


@dataclass(frozen=True)
class ReadOptions:
    """How a site file is read: the image side the encoder sees and, for volumes, the intensity
    window (``data.window``), the axis cut into slices (``data.slice-axis``) and the voxel
    spacing to resample to (``data.spacing``, mm; empty: as stored). ``needs_training``: a site's
    file must hold a training split; the server's test file need not (it reads its test rows)."""

    size: int
    window: str = "percentile"
    slice_axis: int = 2
    spacing: tuple[float, ...] = ()
    needs_training: bool = True


@dataclass(frozen=True)
class SiteData:
    site_id: int
    train: LabelledImages
    val: LabelledImages
