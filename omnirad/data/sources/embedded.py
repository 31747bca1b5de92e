"""``data.dataset=embedded``: the synthetic radiology images every machine generates (no download).

One pool of images, several ways to label it (``EMBEDDED_TASKS``): body region, finding, lesion
masks, captions. Every view is split among sites by body region, so a site holds the same images whatever
it labels, which is what lets one federation train different tasks on them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from omnirad.captions import encode_captions
from omnirad.config.schema import DataConfig
from omnirad.data import synthetic
from omnirad.data.embedded_captions import embedded_captions, embedded_vocabulary
from omnirad.data.labelled import LabelledImages
from omnirad.data.sources.registry import DataSource, register_source
from omnirad.errors import bad_value
from omnirad.registry import Registry
from omnirad.tasks import CAPTIONING, MULTI_CLASS, SEGMENTATION, TaskSpec

EMBEDDED_TRAIN_SEED = 0  # fixed, so runs with different run.seed share one dataset
EMBEDDED_TEST_SEED = 1
EMBEDDED_CAPTION_LENGTH = 16  # tokens, BOS and EOS included: the longest template caption has 12


@dataclass(frozen=True)
class EmbeddedTask:
    """One way to label the embedded images: the task kind, the labels read, their names."""

    kind: str
    labels: Callable[[synthetic.SyntheticSplit], np.ndarray]
    names: tuple[str, ...]

    def overrides(self, name: str) -> dict[str, Any]:
        """The configuration keys that select this view (a multi-task site's own task)."""
        if self.kind == MULTI_CLASS:
            return {"data.task": self.kind, "data.label-set": name}
        return {"data.task": self.kind}


EMBEDDED_TASKS: Registry[EmbeddedTask] = Registry("multitask.site-tasks")
EMBEDDED_TASKS.add("region", EmbeddedTask(MULTI_CLASS, lambda s: s.labels, synthetic.CLASS_NAMES))
EMBEDDED_TASKS.add("finding", EmbeddedTask(MULTI_CLASS, lambda s: s.findings, synthetic.FINDING_NAMES))
EMBEDDED_TASKS.add("lesions", EmbeddedTask(SEGMENTATION, lambda s: s.masks.astype(np.int64), synthetic.MASK_CLASSES))
EMBEDDED_TASKS.add("captions", EmbeddedTask(
    CAPTIONING, lambda s: encode_captions(embedded_captions(s), embedded_vocabulary(), EMBEDDED_CAPTION_LENGTH),
    embedded_vocabulary()))


def label_sets() -> tuple[str, ...]:
    """The values of ``data.label-set``: the classification views."""
    return tuple(name for name, task in EMBEDDED_TASKS.items() if task.kind == MULTI_CLASS)


def view_name(data: DataConfig) -> str:
    """The view a configuration trains: ``data.label-set``, or the segmentation view's name."""
    if data.task == MULTI_CLASS:
        return data.label_set
    return next(name for name, task in EMBEDDED_TASKS.items() if task.kind == data.task)


@lru_cache(maxsize=4)
def _generated(num_samples: int, size: int, seed: int) -> synthetic.SyntheticSplit:
    """One generation of the embedded images, shared by every label view of them (a multi-task
    federation reads body regions, findings and masks of the same pool)."""
    return synthetic.generate(num_samples, size=size, seed=seed)


def embedded_images(num_samples: int, size: int, seed: int, view: str = "region") -> LabelledImages:
    """The embedded images labelled by ``view``, stratified by body region and grouped by imaging style."""
    split = _generated(num_samples, size, seed)
    return LabelledImages(split.images, EMBEDDED_TASKS[view].labels(split), split.modalities, split.labels)


class EmbeddedSource(DataSource):
    name = "embedded"

    def check(self, data: DataConfig) -> None:
        kinds = sorted({task.kind for _, task in EMBEDDED_TASKS.items()}, key=[MULTI_CLASS, SEGMENTATION, CAPTIONING].index)
        if data.task not in kinds:
            raise bad_value("data.task", data.task, "one of " + ", ".join(kinds))
        if data.label_set not in label_sets():
            raise bad_value("data.label-set", data.label_set, "one of " + ", ".join(label_sets()))

    def task(self, data: DataConfig) -> TaskSpec:
        view = EMBEDDED_TASKS[view_name(data)]
        return TaskSpec(view.kind, tuple(view.names))

    def pool(self, data: DataConfig) -> LabelledImages:
        return embedded_images(data.num_train, data.size, EMBEDDED_TRAIN_SEED, view_name(data))

    def test_set(self, data: DataConfig) -> LabelledImages | None:
        return embedded_images(data.num_test, data.size, EMBEDDED_TEST_SEED, view_name(data))

    def partition_class_names(self, data: DataConfig) -> tuple[str, ...]:
        return tuple(synthetic.CLASS_NAMES)


register_source(EmbeddedSource())
