"""Self-supervised pretraining of the encoder: DINO-style self-distillation as OmniRad reports it.

A student (the ViT and a projection head) learns to match an exponential-moving-average teacher
across two global crops of the same image (OmniRad uses global crops only, no local crops); the
teacher's outputs are centred (a running mean subtracted, which keeps one prototype from taking
every image) and sharpened (a lower temperature than the student's), which together keep the
pair from collapsing. The teacher's ViT is the pretrained encoder.

Views suit radiographs: random resized crops, flips, blur and grey-level changes (contrast,
brightness, gamma), no colour jitter or solarisation. Plain PyTorch; the federated version
(sites train students, the server keeps the teacher) builds on ``SelfDistillation``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from torchvision.transforms import v2

from omnirad.encoders import create_encoder, encoder_input


@dataclass(frozen=True)
class DinoSettings:
    out_dim: int = 1024  # prototypes (DINOv2 uses 65,536 for millions of images)
    hidden_dim: int = 1024
    bottleneck_dim: int = 128
    student_temp: float = 0.1
    teacher_temp: float = 0.07  # lower than the student's: the teacher's targets are sharper
    warmup_teacher_temp: float = 0.04  # DINO starts sharper and warms up to teacher_temp
    warmup_fraction: float = 0.3  # of all steps: teacher-temperature warm-up (a third of it for the learning rate)
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
        return self.prototypes(nn.functional.normalize(self.mlp(features), dim=-1))


class SelfDistillation(nn.Module):
    """Student and EMA teacher (ViT + head each), the teacher's centre, and the loss."""

    def __init__(self, vit: nn.Module, settings: DinoSettings = DinoSettings()) -> None:
        super().__init__()
        self.settings = settings
        self.student = nn.ModuleDict({"vit": vit, "head": ProjectionHead(int(vit.num_features), settings)})
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
        return total / len(pairs)

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


def teacher_momentum(step: int, total_steps: int, start: float) -> float:
    """DINO's schedule: from ``start`` to 1 along a half cosine."""
    return 1 - (1 - start) * (math.cos(math.pi * step / max(1, total_steps)) + 1) / 2


def learning_rate(step: int, total_steps: int, peak: float, warmup_steps: int) -> float:
    """Linear warm-up to ``peak``, then a half cosine down to a tenth of it."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak * (0.1 + 0.9 * (math.cos(math.pi * progress) + 1) / 2)


def teacher_temperature(step: int, total_steps: int, s: DinoSettings) -> float:
    """From ``warmup_teacher_temp`` to ``teacher_temp`` over the warm-up, then constant."""
    warmup = max(1, int(s.warmup_fraction * total_steps))
    return s.teacher_temp if step >= warmup else s.warmup_teacher_temp + (s.teacher_temp - s.warmup_teacher_temp) * step / warmup


class RadiologyViews:
    """Random global crops of grey-scale or RGB images (uint8, N x H x W[ x C]) as floats in [0, 1],
    with flips, blur and grey-level changes only."""

    def __init__(self, size: int, scale: tuple[float, float]) -> None:
        self.geometry = v2.Compose([v2.RandomResizedCrop(size, scale=scale, antialias=True), v2.RandomHorizontalFlip(),
                                    v2.RandomApply([v2.GaussianBlur(kernel_size=5, sigma=(0.1, 1.5))], p=0.5)])

    def __call__(self, images: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        pixels = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
        pixels = pixels.unsqueeze(1) if pixels.ndim == 3 else pixels.permute(0, 3, 1, 2)
        views = torch.stack([self.geometry(image) for image in pixels])
        count = len(views)
        contrast = 0.6 + 0.8 * torch.rand(count, 1, 1, 1, generator=generator)
        brightness = 0.2 * (torch.rand(count, 1, 1, 1, generator=generator) - 0.5)
        gamma = torch.exp(0.5 * (torch.rand(count, 1, 1, 1, generator=generator) - 0.5))
        mean = views.mean(dim=(1, 2, 3), keepdim=True)
        views = ((views - mean) * contrast + mean + brightness).clamp(0, 1)
        return views.pow(gamma)


def pretrain(encoder_name: str, images: np.ndarray, image_size: int, epochs: int, batch_size: int = 32,
             lr: float = 5e-4, seed: int = 0, weights: str = "", settings: DinoSettings = DinoSettings()
             ) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Self-distil the encoder on unlabelled images; returns the teacher ViT's weights (timm
    names, loadable by ``create_encoder``) and the mean loss of each epoch."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    frozen = create_encoder(encoder_name, weights, image_size)
    vit = copy.deepcopy(frozen.vit)
    for param in vit.parameters():
        param.requires_grad_(True)
    model = SelfDistillation(vit, settings).train()
    optimizer = torch.optim.AdamW(model.student.parameters(), lr=lr, weight_decay=0.04)
    views = RadiologyViews(frozen.input_size, settings.crop_scale)
    total_steps = epochs * math.ceil(len(images) / batch_size)
    warmup_steps = max(1, int(settings.warmup_fraction * total_steps / 3))
    step, history = 0, []
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator).numpy()
        losses = []
        for start in range(0, len(images), batch_size):
            batch = images[order[start : start + batch_size]]
            crops = [encoder_input(views(batch, generator), frozen.mean, frozen.std, frozen.input_size) for _ in range(2)]
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, total_steps, lr, warmup_steps)
            loss = model.loss(crops, teacher_temperature(step, total_steps, settings))
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.student.parameters(), 3.0)
            optimizer.step()
            step += 1
            model.update_teacher(teacher_momentum(step, total_steps, settings.teacher_momentum))
            losses.append(loss.item())
        history.append(float(np.mean(losses)))
    return {k: v.detach().clone().contiguous() for k, v in model.teacher["vit"].state_dict().items()}, history


def save_encoder(state: dict[str, torch.Tensor], path: str) -> None:
    """A plain timm safetensors file, as published weights come: set ``model.weights`` to it."""
    save_file(state, path)
