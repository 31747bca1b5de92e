"""The ``data`` keys: the source, partition scheme, volume window and score picked by name are
checked against their registries, and the source checks its own keys (``DataSource.check``); every
problem is named at once (``omnirad.problems``)."""

from __future__ import annotations

from omnirad.config.checks import valid_spacing
from omnirad.config.schema import Config
from omnirad.data.partition import PARTITIONS
from omnirad.data.sources import source_of
from omnirad.data.volumes import WINDOWS
from omnirad.errors import ConfigError, bad_value
from omnirad.metrics import VOLUME_SCORES
from omnirad.problems import Problems


def check_data(cfg: Config) -> None:
    """Every problem of the ``data`` keys, in one ``ConfigError`` (not the first alone)."""
    d = cfg.data
    problems = Problems()

    def need(ok: bool, key: str, value: object, expected: str) -> None:
        problems.need(ok, str(bad_value(key, value, expected)))

    try:
        source = source_of(d.dataset)
    except ConfigError as err:  # an unknown source: its own keys cannot be checked
        problems.add(str(err))
    else:
        problems.catch(lambda: source.check(d))
        if not cfg.multitask.site_tasks:  # multi-task: each task has its own kind and classes
            problems.catch(lambda: source.check_task(d))
    need(28 <= d.size <= 224, "data.size", d.size, "an image size from 28 to 224 pixels")
    problems.catch(lambda: PARTITIONS.check(d.partition))
    need(d.alpha > 0, "data.alpha", d.alpha, "> 0")
    need(d.classes_per_site >= 1, "data.classes-per-site", d.classes_per_site, ">= 1")
    need(d.quantity_exponent >= 0, "data.quantity-exponent", d.quantity_exponent, ">= 0")
    need(d.num_sites >= 0, "data.num-sites", d.num_sites, ">= 1, or 0 for the federation's size")
    need(d.num_train >= d.num_sites, "data.num-train", d.num_train, ">= data.num-sites")
    need(d.num_test >= 1, "data.num-test", d.num_test, ">= 1")
    need(0 < d.val_fraction < 1, "data.val-fraction", d.val_fraction, "between 0 and 1")
    need(d.min_site_samples >= 2, "data.min-site-samples", d.min_site_samples, ">= 2")
    problems.catch(lambda: WINDOWS.check(d.window))
    need(d.slice_axis in (0, 1, 2), "data.slice-axis", d.slice_axis, "0, 1 or 2")
    need(valid_spacing(d.spacing), "data.spacing", d.spacing, "empty, or three voxel sizes in mm: x,y,z (0: as stored)")
    need(d.volume_score in VOLUME_SCORES, "data.volume-score", d.volume_score, " or ".join(VOLUME_SCORES))
    problems.raise_if_any()
