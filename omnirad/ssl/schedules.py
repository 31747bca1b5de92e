"""Schedules that run once over a whole pretraining (all rounds), not again in each round."""

from __future__ import annotations

import math
from dataclasses import dataclass


def teacher_momentum(step: int, total_steps: int, start: float) -> float:
    """DINO's schedule: from ``start`` to 1 along a half cosine."""
    return 1 - (1 - start) * (math.cos(math.pi * step / max(1, total_steps)) + 1) / 2


def learning_rate(step: int, total_steps: int, peak: float, warmup_steps: int) -> float:
    """Linear warm-up to ``peak``, then a half cosine down to a tenth of it."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak * (0.1 + 0.9 * (math.cos(math.pi * progress) + 1) / 2)


@dataclass(frozen=True)
class Schedule:
    """Where a stretch of local training sits in the whole pretraining, so that warm-ups and
    cosines run once over all rounds rather than restarting in each."""

    start_step: int
    total_steps: int
    peak_lr: float

    @property
    def warmup_steps(self) -> int:
        return max(1, int(0.1 * self.total_steps))
