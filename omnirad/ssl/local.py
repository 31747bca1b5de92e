"""Local self-supervised training: the loop every objective shares, and central pretraining."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from omnirad.devices import CPU, Placement
from omnirad.encoders import FrozenEncoder, create_encoder, encoder_input
from omnirad.seeds import epoch_seed
from omnirad.ssl.objectives import Learner, new_learner
from omnirad.ssl.schedules import Schedule, learning_rate
from omnirad.ssl.views import RadiologyViews


def train_locally(learner: Learner, images: np.ndarray, encoder: FrozenEncoder, *, epochs: int, batch_size: int,
                  schedule: Schedule, seed: int, placement: Placement = CPU) -> dict[str, float]:
    """``epochs`` passes over ``images`` (labels never used), with the input geometry and
    normalisation of ``encoder``, on ``placement`` (views are drawn on the CPU, from the same
    random numbers whatever the device). Returns the mean loss, the steps taken and the images seen."""
    generator = torch.Generator().manual_seed(seed)
    views = RadiologyViews(encoder.input_size, learner.crop_scale)
    placement.place(learner)
    params = [p for p in learner.student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=schedule.peak_lr, weight_decay=learner.weight_decay, betas=learner.betas)
    scaler = placement.scaler()
    mean, std = encoder.mean.cpu(), encoder.std.cpu()
    learner.train()
    step, losses, seen = schedule.start_step, [], 0
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator).numpy()
        for begin in range(0, len(images), batch_size):
            batch = images[order[begin : begin + batch_size]]
            crops = [placement.move(encoder_input(views(batch, generator), mean, std, encoder.input_size))
                     for _ in range(learner.num_views)]
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, schedule.total_steps, schedule.peak_lr, schedule.warmup_steps)
            with placement.autocast():
                loss = learner.step_loss(crops, step, schedule.total_steps, generator)
            optimizer.zero_grad()
            scaler.scale(loss).backward()  # type: ignore[no-untyped-call]  # torch leaves backward unannotated
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(params, 3.0)
            scaler.step(optimizer)
            scaler.update()
            step += 1
            learner.after_step(step, schedule.total_steps)
            losses.append(loss.item())
            seen += len(batch)
    return {"loss": float(np.mean(losses)) if losses else float("nan"), "steps": step - schedule.start_step,
            "images": seen}


def encoder_state(learner: Learner) -> dict[str, torch.Tensor]:
    """The pretrained ViT in timm's names, on the CPU."""
    return {k: v.detach().cpu().clone().contiguous() for k, v in learner.pretrained_vit().state_dict().items()}


def pretrain(encoder_name: str, images: np.ndarray, *, image_size: int, epochs: int, batch_size: int = 32,
             lr: float = 5e-5, seed: int = 0, weights: str = "", objective: str = "dino",
             settings: Any = None, placement: Placement = CPU) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Pretrain the encoder on unlabelled pooled images; returns the pretrained ViT's weights (timm
    names, loadable by ``create_encoder``) and the mean loss of each epoch. ``settings``: the
    objective's, when not its defaults."""
    torch.manual_seed(seed)
    frozen = create_encoder(encoder_name, weights, image_size)
    learner = new_learner(objective, frozen.vit, frozen.input_size, settings)
    steps_per_epoch = math.ceil(len(images) / batch_size)
    history = []
    for epoch in range(epochs):
        schedule = Schedule(epoch * steps_per_epoch, epochs * steps_per_epoch, lr)
        result = train_locally(learner, images, frozen, epochs=1, batch_size=batch_size, schedule=schedule,
                               seed=epoch_seed(seed, epoch), placement=placement)
        history.append(result["loss"])
    return encoder_state(learner), history


def save_encoder(state: dict[str, torch.Tensor], path: str) -> None:
    """A plain timm safetensors file, as published weights come: set ``model.weights`` to it."""
    save_file(state, path)
