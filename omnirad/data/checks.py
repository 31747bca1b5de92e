"""The ``data`` keys: the source, partition scheme, volume window and score picked by name are
checked against their registries, and the source checks its own keys (``DataSource.check``)."""

from __future__ import annotations

from omnirad.config.checks import valid_spacing
from omnirad.config.schema import Config
from omnirad.data.partition import PARTITIONS
from omnirad.data.sources import source_of
from omnirad.data.volumes import WINDOWS
from omnirad.errors import require
from omnirad.metrics import VOLUME_SCORES


def check_data(cfg: Config) -> None:
    d = cfg.data
    source = source_of(d.dataset)
    require(28 <= d.size <= 224, "data.size", d.size, "an image size from 28 to 224 pixels")
    source.check(d)
    if not cfg.multitask.site_tasks:  # multi-task: each task has its own kind and classes
        source.check_task(d)
    PARTITIONS.check(d.partition)
    require(d.alpha > 0, "data.alpha", d.alpha, "> 0")
    require(d.classes_per_site >= 1, "data.classes-per-site", d.classes_per_site, ">= 1")
    require(d.quantity_exponent >= 0, "data.quantity-exponent", d.quantity_exponent, ">= 0")
    require(d.num_sites >= 0, "data.num-sites", d.num_sites, ">= 1, or 0 for the federation's size")
    require(d.num_train >= d.num_sites, "data.num-train", d.num_train, ">= data.num-sites")
    require(d.num_test >= 1, "data.num-test", d.num_test, ">= 1")
    require(0 < d.val_fraction < 1, "data.val-fraction", d.val_fraction, "between 0 and 1")
    require(d.min_site_samples >= 2, "data.min-site-samples", d.min_site_samples, ">= 2")
    WINDOWS.check(d.window)
    require(d.slice_axis in (0, 1, 2), "data.slice-axis", d.slice_axis, "0, 1 or 2")
    require(valid_spacing(d.spacing), "data.spacing", d.spacing, "empty, or three voxel sizes in mm: x,y,z (0: as stored)")
    require(d.volume_score in VOLUME_SCORES, "data.volume-score", d.volume_score, " or ".join(VOLUME_SCORES))
