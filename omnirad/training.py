"""Local training and evaluation of an adapter on top of the frozen encoder.

The encoder is frozen and, without augmentation, deterministic, so a site encodes its images once
per task and trains the adapter for all its local epochs on those features: the same result as
running the encoder in every step, at a fraction of the cost.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
from torch import nn

from omnirad.encoders import FrozenEncoder
from omnirad.metrics import classification_metrics
from omnirad.tasks import TaskSpec

log = logging.getLogger(__name__)


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 images, (N, H, W) grey or (N, H, W, C) colour, to float (N, C, H, W) in [0, 1]."""
    tensor = torch.from_numpy(np.ascontiguousarray(images))
    tensor = tensor.unsqueeze(1) if tensor.ndim == 3 else tensor.permute(0, 3, 1, 2)
    return tensor.float().div_(255.0)


@torch.no_grad()
def encode(encoder: FrozenEncoder, images: np.ndarray, batch_size: int = 128, desc: str = "") -> torch.Tensor:
    """Pooled features of all images, in batches; logs throughput so slow encoders are visible."""
    start = time.perf_counter()
    chunks = [encoder(images_to_tensor(images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
    seconds = time.perf_counter() - start
    log.info("encoded %d images%s in %.1f s (%.0f img/s)", len(images), f" ({desc})" if desc else "", seconds, len(images) / max(seconds, 1e-9))
    return torch.cat(chunks)


def train_adapter(
    adapter: nn.Module,
    features: torch.Tensor,
    labels: np.ndarray,
    task: TaskSpec,
    epochs: int,
    lr: float,
    batch_size: int,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> dict[str, float]:
    """Train a classification adapter on cached features with AdamW; returns the mean last-epoch loss.

    Shuffling and dropout draw from ``seed`` alone, so a round of a site is reproducible.
    """
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        targets = task.targets(labels)
        optimizer = torch.optim.AdamW(adapter.parameters(), lr=lr, weight_decay=weight_decay)
        adapter.train()
        epoch_loss = float("nan")
        for _ in range(epochs):
            order = torch.randperm(len(targets), generator=generator)
            total = 0.0
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                optimizer.zero_grad()
                loss = task.loss(adapter(features[batch]), targets[batch])
                loss.backward()
                optimizer.step()
                total += loss.item() * len(batch)
            epoch_loss = total / len(order)
        adapter.eval()
    return {"train_loss": epoch_loss}


@torch.no_grad()
def evaluate_adapter(adapter: nn.Module, features: torch.Tensor, labels: np.ndarray, task: TaskSpec) -> dict[str, float]:
    """Loss, accuracy, macro-F1 and AUC of the adapter on encoded features."""
    adapter.eval()
    logits = adapter(features)
    loss = task.loss(logits, task.targets(labels)).item()
    return {"loss": loss, **classification_metrics(labels, logits, task)}
