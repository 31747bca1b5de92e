"""Where a participant computes, and at which precision: ``run.device`` and ``run.precision``.

Every path that runs a model (encoding, training heads, LoRA, decoders, DP-SGD, SSL pretraining,
evaluation) takes a ``Placement`` and moves its module and each batch there; features and adapter
tensors come back to the CPU in float32, so what a site caches, sends and stores is the same
whatever its device. On the CPU in float32 a placement changes nothing: results are bit-identical
to code that never heard of devices.

A site's device is its own choice (its site file in deployment); the server's run configuration
only says what to train.
"""

from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import TypeVar

import torch
from torch import nn

from omnirad.config.schema import RunConfig
from omnirad.errors import ConfigError

log = logging.getLogger(__name__)

DEVICE_SYNTAX = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
M = TypeVar("M", bound=nn.Module)


@dataclass(frozen=True)
class Placement:
    """A device and a precision: ``fp32``, or mixed precision by autocast (``bf16``, or ``fp16``
    with a gradient scaler)."""

    device: torch.device
    precision: str = "fp32"

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return AUTOCAST_DTYPES[self.precision]

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        """Mixed precision for the forward pass and loss; a no-op in fp32."""
        dtype = self.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def scaler(self) -> torch.amp.GradScaler:
        """fp16 needs loss scaling (its range is narrow); bf16 and fp32 do not: a disabled scaler."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def place(self, module: M) -> M:
        """The module on this device (a no-op on the CPU)."""
        return module.to(self.device) if self.device.type != "cpu" else module

    def move(self, tensor: torch.Tensor) -> torch.Tensor:
        """A batch on this device: pinned and copied asynchronously to a GPU, untouched on the CPU."""
        if self.device.type == "cpu":
            return tensor
        if self.device.type == "cuda" and not tensor.is_pinned():
            tensor = tensor.pin_memory()
        return tensor.to(self.device, non_blocking=True)

    def describe(self) -> str:
        return f"{self.device} {self.precision}"


CPU = Placement(torch.device("cpu"), "fp32")


def check_device_syntax(device: str, precision: str) -> None:
    """What configuration validation can say anywhere; whether the device exists is for the
    machine that computes (``resolve_placement``)."""
    if not DEVICE_SYNTAX.match(device):
        raise ConfigError(f"bad value for configuration key 'run.device': {device!r} "
                          "(expected auto, cpu, mps, cuda or cuda:N)")
    if precision not in PRECISIONS:
        raise ConfigError(f"bad value for configuration key 'run.precision': {precision!r} "
                          f"(expected one of {', '.join(PRECISIONS)})")


@lru_cache(maxsize=8)
def resolve_placement(device: str, precision: str) -> Placement:
    """The placement ``run.device`` and ``run.precision`` mean on this machine. ``auto``: CUDA if
    present, else Apple's MPS, else the CPU; bf16 on a GPU that has it, else fp16 on CUDA, fp32
    elsewhere. Raises ``ConfigError`` before any work for a device this machine lacks, or a
    precision the device cannot run."""
    check_device_syntax(device, precision)
    resolved = torch.device(_auto_device() if device == "auto" else device)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"run.device={device!r}, but this machine has no CUDA device (torch "
                              f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}); use run.device=auto "
                              "or cpu")
        index = resolved.index if resolved.index is not None else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"run.device={device!r}, but this machine has {torch.cuda.device_count()} CUDA devices "
                              f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
        resolved = torch.device("cuda", index)
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"run.device={device!r}, but Apple's MPS is not available here; use run.device=auto or cpu")
    chosen = _auto_precision(resolved) if precision == "auto" else precision
    if chosen == "bf16" and resolved.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"run.precision='bf16', but {torch.cuda.get_device_name(resolved)} does not support "
                          "bfloat16; use run.precision=fp16 or auto")
    if chosen == "fp16" and resolved.type == "cpu":
        raise ConfigError("run.precision='fp16' needs a GPU; on the CPU use bf16 or fp32")
    return Placement(resolved, chosen)


def _auto_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _auto_precision(device: torch.device) -> str:
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def placement_for(run: RunConfig) -> Placement:
    """Where this participant computes (``run.device``, ``run.precision``)."""
    return resolve_placement(run.device, run.precision)
