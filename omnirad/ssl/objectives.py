"""Self-supervised objectives (``ssl.objective``): what a learner must offer the training loops.

A learner wraps a trainable copy of the ViT (``student["vit"]``) with whatever its objective adds
(a projection head and EMA teacher, a pixel decoder). The local loop and the federated round only
talk to this interface, so a new objective is one module with a ``Learner`` subclass and one
``SSL_OBJECTIVES.add`` line.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from omnirad.config.schema import SslConfig
from omnirad.errors import require
from omnirad.registry import Registry

CENTER_KEY = "center"  # the DINO centre travels with the student's tensors and is averaged with them


class Learner(nn.Module):
    """The student (and anything else) an objective trains around the ViT."""

    student: nn.ModuleDict
    num_views = 1  # augmented views of each image per step
    weight_decay = 0.05
    betas = (0.9, 0.95)
    crop_scale: tuple[float, float] = (0.5, 1.0)

    def step_loss(self, crops: list[torch.Tensor], step: int, total_steps: int,
                  generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def after_step(self, step: int, total_steps: int) -> None:
        """What follows each optimiser step (DINO's teacher EMA); nothing by default."""

    def pretrained_vit(self) -> nn.Module:
        """The ViT that becomes the pretrained encoder."""
        return self.student["vit"]

    def round_state(self) -> dict[str, torch.Tensor]:
        """What a site sends back after a round and the server averages: the student's tensors."""
        return {k: v.detach().clone() for k, v in self.student.state_dict().items()}

    def load_round_state(self, student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor]) -> None:
        """Start a round from the server's student (and teacher, for objectives with one)."""
        self.student.load_state_dict(student)

    def teacher_state(self) -> dict[str, torch.Tensor]:
        """The teacher the server keeps (empty: the objective has none)."""
        return {}


@dataclass(frozen=True)
class Objective:
    """``build(vit, input_size, settings)``; ``settings``: its defaults, replaceable (tests use tiny ones)."""

    build: Callable[[nn.Module, int, Any], Learner]
    settings: Any


SSL_OBJECTIVES: Registry[Objective] = Registry("ssl.objective")


def new_learner(objective: str, vit: nn.Module, input_size: int, settings: Any = None) -> Learner:
    """The objective's learner around a trainable copy of ``vit``; every participant builds the same
    initial heads because the caller seeds torch first."""
    spec = SSL_OBJECTIVES[objective]
    vit = copy.deepcopy(vit)
    for param in vit.parameters():
        param.requires_grad_(True)
    return spec.build(vit, input_size, spec.settings if settings is None else settings)


def check_ssl(ssl: SslConfig) -> None:
    """The ``ssl`` keys (every objective is registered once ``omnirad.ssl`` is imported)."""
    require(ssl.rounds >= 0, "ssl.rounds", ssl.rounds, ">= 0 (0: no pretraining)")
    require(ssl.local_epochs >= 1, "ssl.local-epochs", ssl.local_epochs, ">= 1")
    require(ssl.lr > 0, "ssl.lr", ssl.lr, "> 0")
    require(ssl.batch_size >= 2, "ssl.batch-size", ssl.batch_size, ">= 2")
    SSL_OBJECTIVES.check(ssl.objective)
    require(not ssl.save_encoder or ssl.save_encoder.endswith(".safetensors"), "ssl.save-encoder", ssl.save_encoder,
            "empty or a path ending in .safetensors")
