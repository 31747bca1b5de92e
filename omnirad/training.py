"""Local training and evaluation of a site's model.

With a frozen encoder and no augmentation the encoder's outputs are deterministic, so a site
encodes its images once and trains a head or decoder for all its local epochs on those features:
the same result as running the encoder in every step, at a fraction of the cost. LoRA and full
fine-tuning change the encoder, so they train on the images themselves.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
from torch import nn

from omnirad.config.schema import TrainConfig
from omnirad.devices import CPU, Placement
from omnirad.encoders import FrozenEncoder
from omnirad.images import images_to_tensor
from omnirad.metrics import task_metrics
from omnirad.tasks import TaskSpec

log = logging.getLogger(__name__)


def encode(encoder: FrozenEncoder, images: np.ndarray, *, batch_size: int = 128, desc: str = "",
           token_layers: list[int] | None = None, placement: Placement = CPU) -> torch.Tensor:
    """Pooled features (N, D) of all images, or with ``token_layers`` the patch tokens of those
    blocks concatenated on channels (N, L*D, h, w); in batches on ``placement``'s device, returned
    as float32 on the CPU whatever the device and precision; logging throughput."""
    start = time.perf_counter()
    chunks = []
    placement.place(encoder)
    with torch.inference_mode(), placement.autocast():
        for i in range(0, len(images), batch_size):
            # uint8 across the bus (a quarter of the bytes); the encoder converts and normalises on the device
            batch = placement.move(images_to_tensor(images[i : i + batch_size], as_float=False))
            out = encoder(batch) if token_layers is None else torch.cat(encoder.patch_tokens(batch, token_layers), dim=1)
            chunks.append(out.float().cpu())
    features = torch.cat(chunks)  # outside inference mode: a plain tensor that heads can train on
    seconds = time.perf_counter() - start
    log.info("encoded %d images%s in %.1f s (%.0f img/s, %s)", len(images), f" ({desc})" if desc else "", seconds,
             len(images) / max(seconds, 1e-9), placement.describe())
    return features


def train_model(model: nn.Module, inputs: torch.Tensor, labels: np.ndarray, task: TaskSpec, *,
                train: TrainConfig, epochs: int | None = None, seed: int = 0, proximal_mu: float = 0.0,
                placement: Placement = CPU) -> dict[str, float]:
    """Train a model's trainable parameters with AdamW (``train``: learning rate, batch size,
    weight decay, and epochs unless ``epochs`` says otherwise); returns the mean last-epoch task loss.

    ``inputs`` are whatever the model reads: cached features or tokens, or images for a model
    that runs the encoder. Shuffling and dropout draw from ``seed`` alone, so a round of a site is
    reproducible. ``proximal_mu`` > 0 adds FedProx's term mu/2 ||w - w_start||^2, which keeps a
    site with skewed data from drifting far from the global model it started from. The model
    trains on ``placement`` (moved there; batches follow one by one) with its mixed precision.
    """
    epochs = train.local_epochs if epochs is None else epochs
    lr, batch_size, weight_decay = train.lr, train.batch_size, train.weight_decay
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        targets = task.targets(labels)
        placement.place(model)
        trainable = [p for p in model.parameters() if p.requires_grad]
        anchor = [p.detach().clone() for p in trainable] if proximal_mu > 0 else []
        optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay)
        scaler = placement.scaler()
        model.train()
        epoch_loss = float("nan")
        for _ in range(epochs):
            order = torch.randperm(len(targets), generator=generator)
            total = 0.0
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                optimizer.zero_grad()
                with placement.autocast():
                    y = placement.move(targets[batch])
                    loss = task.loss(task_outputs(model, placement.move(inputs[batch]), y, task), y)
                objective = loss
                if anchor:
                    objective = loss + proximal_mu / 2 * sum(((p - p0) ** 2).sum() for p, p0 in zip(trainable, anchor, strict=True))
                scaler.scale(objective).backward()  # type: ignore[no-untyped-call]  # torch leaves backward unannotated
                scaler.step(optimizer)
                scaler.update()
                total += loss.item() * len(batch)
            epoch_loss = total / len(order)
        model.eval()
    return {"train_loss": epoch_loss}


def task_outputs(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, task: TaskSpec) -> torch.Tensor:
    """What the loss scores: the model's outputs, or for captioning its teacher-forced next-word
    logits (the decoder reads the reference words before each one)."""
    return torch.as_tensor(model(inputs, targets) if task.captioning else model(inputs))


@torch.no_grad()
def predict(model: nn.Module, inputs: torch.Tensor, batch_size: int = 256, *, placement: Placement = CPU,
            targets: torch.Tensor | None = None) -> torch.Tensor:
    """The model's outputs for all inputs (with ``targets``: teacher-forced, as ``task_outputs``),
    in batches (images and token maps are large), computed on ``placement`` and returned as
    float32 on the CPU. A caption decoder without targets returns generated token ids."""
    placement.place(model).eval()
    outputs = []
    with placement.autocast():
        for i in range(0, len(inputs), batch_size):
            x = placement.move(inputs[i : i + batch_size])
            out = model(x) if targets is None else model(x, placement.move(targets[i : i + batch_size]))
            outputs.append(out.float().cpu())
    return torch.cat(outputs)


@torch.no_grad()
def evaluate_model(model: nn.Module, inputs: torch.Tensor, labels: np.ndarray, task: TaskSpec, *,
                   placement: Placement = CPU, volumes: np.ndarray | None = None,
                   volume_score: str = "mean") -> dict[str, float]:
    """Loss and the task's metrics (accuracy, macro-F1, AUC; Dice, IoU; or caption scores of the
    greedily generated captions) of the model, and per volume (``volume_*``) when ``volumes`` gives
    each input's volume."""
    targets = task.targets(labels)
    if task.captioning:
        loss = task.loss(predict(model, inputs, placement=placement, targets=targets), targets).item()
        return {"loss": loss, **task_metrics(labels, predict(model, inputs, placement=placement), task)}
    logits = predict(model, inputs, placement=placement)
    loss = task.loss(logits, targets).item()
    return {"loss": loss, **task_metrics(labels, logits, task, volumes, volume_score)}
