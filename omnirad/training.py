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
from omnirad.encoders import FrozenEncoder
from omnirad.images import images_to_tensor
from omnirad.metrics import task_metrics
from omnirad.tasks import TaskSpec

log = logging.getLogger(__name__)


@torch.no_grad()
def encode(encoder: FrozenEncoder, images: np.ndarray, *, batch_size: int = 128, desc: str = "",
           token_layers: list[int] | None = None) -> torch.Tensor:
    """Pooled features (N, D) of all images, or with ``token_layers`` the patch tokens of those
    blocks concatenated on channels (N, L*D, h, w); in batches, logging throughput."""
    start = time.perf_counter()
    chunks = []
    for i in range(0, len(images), batch_size):
        batch = images_to_tensor(images[i : i + batch_size])
        chunks.append(encoder(batch) if token_layers is None else torch.cat(encoder.patch_tokens(batch, token_layers), dim=1))
    seconds = time.perf_counter() - start
    log.info("encoded %d images%s in %.1f s (%.0f img/s)", len(images), f" ({desc})" if desc else "", seconds, len(images) / max(seconds, 1e-9))
    return torch.cat(chunks)


def train_model(model: nn.Module, inputs: torch.Tensor, labels: np.ndarray, task: TaskSpec, *,
                train: TrainConfig, epochs: int | None = None, seed: int = 0,
                proximal_mu: float = 0.0) -> dict[str, float]:
    """Train a model's trainable parameters with AdamW (``train``: learning rate, batch size,
    weight decay, and epochs unless ``epochs`` says otherwise); returns the mean last-epoch task loss.

    ``inputs`` are whatever the model reads: cached features or tokens, or images for a model
    that runs the encoder. Shuffling and dropout draw from ``seed`` alone, so a round of a site is
    reproducible. ``proximal_mu`` > 0 adds FedProx's term mu/2 ||w - w_start||^2, which keeps a
    site with skewed data from drifting far from the global model it started from.
    """
    epochs = train.local_epochs if epochs is None else epochs
    lr, batch_size, weight_decay = train.lr, train.batch_size, train.weight_decay
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        targets = task.targets(labels)
        trainable = [p for p in model.parameters() if p.requires_grad]
        anchor = [p.detach().clone() for p in trainable] if proximal_mu > 0 else []
        optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay)
        model.train()
        epoch_loss = float("nan")
        for _ in range(epochs):
            order = torch.randperm(len(targets), generator=generator)
            total = 0.0
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                optimizer.zero_grad()
                loss = task.loss(model(inputs[batch]), targets[batch])
                objective = loss
                if anchor:
                    objective = loss + proximal_mu / 2 * sum(((p - p0) ** 2).sum() for p, p0 in zip(trainable, anchor, strict=True))
                objective.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
                optimizer.step()
                total += loss.item() * len(batch)
            epoch_loss = total / len(order)
        model.eval()
    return {"train_loss": epoch_loss}


@torch.no_grad()
def predict(model: nn.Module, inputs: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The model's outputs for all inputs, in batches (images and token maps are large)."""
    model.eval()
    return torch.cat([model(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)])


@torch.no_grad()
def evaluate_model(model: nn.Module, inputs: torch.Tensor, labels: np.ndarray, task: TaskSpec) -> dict[str, float]:
    """Loss and the task's metrics (accuracy, macro-F1, AUC; or Dice, IoU) of the model."""
    logits = predict(model, inputs)
    loss = task.loss(logits, task.targets(labels)).item()
    return {"loss": loss, **task_metrics(labels, logits, task)}
