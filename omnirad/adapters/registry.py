"""The adapters a site can train (``model.adapter``) and the heads they end in (``model.head``).

An adapter registration says what the adapter reads (pooled features and patch tokens are fixed
while the encoder is frozen, so a site computes them once; an adapter that changes the encoder
reads images), which task it serves, and how to build it. A new adapter is one module with an
``nn.Module`` and one ``ADAPTERS.add`` line, imported in ``omnirad/adapters/__init__.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from omnirad.config.schema import ModelConfig
from omnirad.encoders import FrozenEncoder
from omnirad.registry import Registry
from omnirad.tasks import TaskSpec

POOLED, TOKENS, IMAGES = "pooled features", "patch tokens", "images"


@dataclass(frozen=True)
class ModelRecipe:
    """What building an adapter needs: the model keys, the frozen encoder, the task, the image size."""

    model: ModelConfig
    encoder: FrozenEncoder
    task: TaskSpec
    image_size: int


@dataclass(frozen=True)
class AdapterSpec:
    """``reads``: POOLED, TOKENS or IMAGES. ``segmentation``: the adapter serves segmentation
    tasks, ``captioning``: captioning tasks (neither: classification). ``segmentation_twin``: in a multi-task run, what the sites of a
    segmentation task train when the others train this adapter (empty: not in multi-task runs);
    ``captioning_twin``: the same for the sites of a captioning task (empty: none may join)."""

    reads: str
    segmentation: bool
    build: Callable[[ModelRecipe], nn.Module]
    segmentation_twin: str = ""
    captioning: bool = False
    captioning_twin: str = ""

    @property
    def family(self) -> str:
        """The task family served, as ``TaskSpec.family`` names it."""
        return "segmentation" if self.segmentation else "captioning" if self.captioning else "classification"


ADAPTERS: Registry[AdapterSpec] = Registry("model.adapter")

HeadBuilder = Callable[[int, int, ModelConfig], nn.Module]  # (feature width, outputs, model keys) -> head
HEADS: Registry[HeadBuilder] = Registry("model.head")


def create_head(name: str, in_dim: int, num_classes: int, model: ModelConfig | None = None) -> nn.Module:
    """A classification head by name, on ``in_dim`` features, with ``num_classes`` outputs."""
    return HEADS[name](in_dim, num_classes, model if model is not None else ModelConfig())
