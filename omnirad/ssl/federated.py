"""Federated self-supervised pretraining: what a site runs in one round, and what the server keeps.

Sites train students on their own unlabelled images; the server averages them (Flower's FedAvg)
and, for an objective with a teacher (DINO), moves the federation's teacher towards the average
by EMA. Schedules run over all rounds, so the federation follows one schedule rather than
restarting it each round.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from omnirad.config.schema import SslConfig
from omnirad.devices import CPU, Placement
from omnirad.encoders import create_encoder
from omnirad.seeds import ssl_round_seed
from omnirad.ssl.local import train_locally
from omnirad.ssl.objectives import new_learner
from omnirad.ssl.schedules import Schedule, teacher_momentum


def initial_states(objective: str, encoder_name: str, *, weights: str, image_size: int, seed: int,
                   settings: Any = None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The server's starting student (ViT + head or decoder, and the DINO centre) and teacher
    (empty for an objective without one)."""
    torch.manual_seed(seed)
    frozen = create_encoder(encoder_name, weights, image_size)
    learner = new_learner(objective, frozen.vit, frozen.input_size, settings)
    return learner.round_state(), learner.teacher_state()


@dataclass(frozen=True)
class SslRound:
    """One site's instructions for a pretraining round: the objective and encoder, the received
    student and teacher, where the round sits in the pretraining, and the site's seed."""

    ssl: SslConfig  # objective, local epochs, learning rate, batch size
    encoder: str
    image_size: int
    student: dict[str, torch.Tensor]
    teacher: dict[str, torch.Tensor]
    server_round: int
    rounds: int
    seed: int


def site_round(task: SslRound, images: np.ndarray, settings: Any = None, *,
               placement: Placement = CPU) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """One site's share of a federated pretraining round: load the received student and teacher,
    train the student on the site's own images, and return the new student and scalar metrics.
    This site's step position is ``(server_round - 1)`` rounds of its own steps. Within the round
    the site's teacher copy follows its student by EMA and is then dropped: the server keeps the
    federation's teacher."""
    s = task.ssl
    frozen = create_encoder(task.encoder, "", task.image_size)  # the architecture only: weights come in the message
    learner = new_learner(s.objective, frozen.vit, frozen.input_size, settings)
    learner.load_round_state(task.student, task.teacher)
    steps_per_round = s.local_epochs * math.ceil(len(images) / s.batch_size)
    schedule = Schedule((task.server_round - 1) * steps_per_round, task.rounds * steps_per_round, s.lr)
    metrics = train_locally(learner, images, frozen, epochs=s.local_epochs, batch_size=s.batch_size,
                            schedule=schedule, seed=ssl_round_seed(task.seed, task.server_round), placement=placement)
    return {k: v.cpu() for k, v in learner.round_state().items()}, metrics


def round_momentum(server_round: int, rounds: int, local_steps: float, start: float) -> float:
    """The server's teacher momentum for a round: DINO's per-step momentum at this point of the
    schedule, compounded over the round's local steps, so the teacher trails the federation's
    student by as many steps as it would trail a central student (0.996 per step over 75 local
    steps is 0.74 per round)."""
    per_step = teacher_momentum(server_round - 1, rounds, start)
    return float(per_step ** max(1.0, local_steps))


@torch.no_grad()
def update_server_teacher(teacher: dict[str, torch.Tensor], student: dict[str, torch.Tensor],
                          momentum: float) -> dict[str, torch.Tensor]:
    """teacher <- momentum * teacher + (1 - momentum) * aggregated student (ViT and head; the
    centre is not part of the teacher). Integer buffers are taken from the student."""
    out = {}
    for key, value in teacher.items():
        new = student[key].to(value.dtype)
        out[key] = value * momentum + new * (1 - momentum) if value.dtype.is_floating_point else new.clone()
    return out


def to_wire(state: dict[str, torch.Tensor], half: bool) -> dict[str, torch.Tensor]:
    """What is sent: float32 tensors as float16 when ``half`` (half the bytes), the rest unchanged."""
    if not half:
        return state
    return {k: v.half() if v.dtype == torch.float32 else v for k, v in state.items()}


def from_wire(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Received tensors back in float32 for training and averaging."""
    return {k: v.float() if v.dtype == torch.float16 else v for k, v in state.items()}


def teacher_encoder(teacher: dict[str, torch.Tensor], student: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The pretrained ViT in timm names: the teacher's when the objective has one (DINO), else the
    aggregated student's (MAE)."""
    source = teacher if teacher else student
    return {k.removeprefix("vit."): v.detach().clone().contiguous() for k, v in source.items() if k.startswith("vit.")}
