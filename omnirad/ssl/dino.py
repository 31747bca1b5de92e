"""DINO-style self-distillation, as OmniRad reports it.

A student (the ViT and a projection head) learns to match an exponential-moving-average teacher
across two global crops of the same image (OmniRad uses global crops only, no local crops); the
teacher's outputs are centred (a running mean subtracted, which keeps one prototype from taking
every image) and sharpened (a lower temperature than the student's), which together keep the
pair from collapsing. The teacher's ViT is the pretrained encoder.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from omnirad.ssl.objectives import CENTER_KEY, SSL_OBJECTIVES, Learner, Objective
from omnirad.ssl.schedules import teacher_momentum


@dataclass(frozen=True)
class DinoSettings:
    out_dim: int = 1024  # prototypes (DINOv2 uses 65,536 for millions of images)
    hidden_dim: int = 1024
    bottleneck_dim: int = 128
    student_temp: float = 0.1
    teacher_temp: float = 0.07  # lower than the student's: the teacher's targets are sharper
    warmup_teacher_temp: float = 0.04  # DINO starts sharper and warms up to teacher_temp
    warmup_fraction: float = 0.3  # of all steps: teacher-temperature warm-up (the learning rate warms up over 10 %)
    center_momentum: float = 0.9
    teacher_momentum: float = 0.996  # EMA at the start; it rises to 1 along a cosine
    crop_scale: tuple[float, float] = (0.32, 1.0)


class ProjectionHead(nn.Module):
    """MLP to a bottleneck, L2-normalised, then a weight-normalised layer onto the prototypes."""

    def __init__(self, in_dim: int, s: DinoSettings) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, s.hidden_dim), nn.GELU(), nn.Linear(s.hidden_dim, s.hidden_dim),
                                 nn.GELU(), nn.Linear(s.hidden_dim, s.bottleneck_dim))
        self.prototypes = nn.utils.parametrizations.weight_norm(nn.Linear(s.bottleneck_dim, s.out_dim, bias=False))
        # DINO fixes the prototypes' norms at 1, so logits are cosines in [-1, 1]: left at their
        # initial ~0.2 the teacher's targets were near uniform (entropy 6.69 of ln 1024 = 6.93)
        magnitude = self.prototypes.parametrizations.weight.original0
        magnitude.data.fill_(1.0)
        magnitude.requires_grad_(False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.prototypes(nn.functional.normalize(self.mlp(features), dim=-1)))


class SelfDistillation(Learner):
    """Student and EMA teacher (ViT + head each), the teacher's centre, and the loss."""

    center: torch.Tensor  # a buffer, registered in __init__
    num_views = 2
    weight_decay = 0.04
    betas = (0.9, 0.999)

    def __init__(self, vit: nn.Module, settings: DinoSettings = DinoSettings()) -> None:
        super().__init__()
        self.settings = settings
        self.crop_scale = settings.crop_scale
        num_features = int(vit.num_features)  # type: ignore[arg-type]  # timm sets an int; typed Tensor | Module
        self.student = nn.ModuleDict({"vit": vit, "head": ProjectionHead(num_features, settings)})
        self.teacher = copy.deepcopy(self.student)
        for param in self.teacher.parameters():
            param.requires_grad_(False)
        self.register_buffer("center", torch.zeros(1, settings.out_dim))

    def loss(self, views: list[torch.Tensor], teacher_temp: float | None = None) -> torch.Tensor:
        """Cross-entropy of the student's view against the teacher's other views, averaged over
        pairs; updates the centre with this batch's teacher outputs."""
        s = self.settings
        temp = s.teacher_temp if teacher_temp is None else teacher_temp
        student = [self.student["head"](self.student["vit"](v)) / s.student_temp for v in views]
        with torch.no_grad():
            teacher_out = [self.teacher["head"](self.teacher["vit"](v)) for v in views]
            targets = [torch.softmax((t - self.center) / temp, dim=-1) for t in teacher_out]
        pairs = [(i, j) for i in range(len(views)) for j in range(len(views)) if i != j]
        total = sum(-(targets[i] * torch.log_softmax(student[j], dim=-1)).sum(dim=-1).mean() for i, j in pairs)
        self.update_center(torch.cat(teacher_out))
        return cast(torch.Tensor, total / len(pairs))  # sum() of tensors is typed Tensor | int

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        m = self.settings.center_momentum
        self.center.mul_(m).add_(teacher_out.mean(dim=0, keepdim=True), alpha=1 - m)

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher <- momentum * teacher + (1 - momentum) * student, tensor by tensor."""
        for t, s in zip(self.teacher.state_dict().values(), self.student.state_dict().values(), strict=True):
            if t.dtype.is_floating_point:
                t.mul_(momentum).add_(s.detach(), alpha=1 - momentum)


    def step_loss(self, crops: list[torch.Tensor], step: int, total_steps: int,
                  generator: torch.Generator) -> torch.Tensor:
        return self.loss(crops, teacher_temperature(step, total_steps, self.settings))

    def after_step(self, step: int, total_steps: int) -> None:
        self.update_teacher(teacher_momentum(step, total_steps, self.settings.teacher_momentum))

    def pretrained_vit(self) -> nn.Module:
        return self.teacher["vit"]

    def round_state(self) -> dict[str, torch.Tensor]:
        return {**super().round_state(), CENTER_KEY: self.center.detach().clone()}

    def load_round_state(self, student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor]) -> None:
        state = dict(student)
        center = state.pop(CENTER_KEY, None)
        if center is None:
            raise ValueError(f"ssl: a DINO student arrives with its '{CENTER_KEY}' tensor; it has none")
        self.student.load_state_dict(state)
        self.teacher.load_state_dict(teacher)
        self.center.copy_(center)

    def teacher_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.teacher.state_dict().items()}


def teacher_temperature(step: int, total_steps: int, s: DinoSettings) -> float:
    """From ``warmup_teacher_temp`` to ``teacher_temp`` over the warm-up, then constant."""
    warmup = max(1, int(s.warmup_fraction * total_steps))
    return s.teacher_temp if step >= warmup else s.warmup_teacher_temp + (s.teacher_temp - s.warmup_teacher_temp) * step / warmup


SSL_OBJECTIVES.add("dino", Objective(lambda vit, input_size, settings: SelfDistillation(vit, settings), DinoSettings()))
