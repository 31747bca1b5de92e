"""Feature standardisation for the heads, from statistics pooled over every site.

A frozen ViT's pooled features have per-dimension offsets and scales that differ by encoder; a
head trained on them for a few federated rounds converges slowly and ranks encoders by how well
conditioned their features are, not by what they separate. SSL evaluations therefore probe
standardised features (MAE puts a BatchNorm without affine parameters before its linear probe;
scikit-learn probes z-score first). A BatchNorm's running statistics would stay at each site (they are not parameters), so
here the statistics are computed once, before round 1: each site sends the count, sum and sum of
squares of its training features (``FeatureMoments``), the server pools them exactly into one mean
and standard deviation (``Standardisation``), and these ride on every round's instructions, like
the spectral bank. Every participant then standardises the same way, and the head it trains and
the server evaluates is ``StandardisedHead``.

What the moments reveal: a site's number of training images and the mean and spread of its
images' features, per dimension; no single image's features.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from omnirad.closed_form import closed_form_head
from omnirad.protocol import FEATURE_MEAN, FEATURE_STD

MIN_STD = 1e-6  # a constant feature is centred but not blown up
SECURE_SUM_MOMENTS = "feature-moments"  # privacy.secure-sum: the moments' purpose (omnirad.secure_sum)


@dataclass(frozen=True)
class FeatureMoments:
    """What one site sends: image count, per-dimension sum and sum of squares (float64, so that
    pooling many sites' sums loses nothing)."""

    count: int
    total: torch.Tensor
    squares: torch.Tensor

    @classmethod
    def of(cls, features: torch.Tensor) -> FeatureMoments:
        if features.ndim != 2 or len(features) == 0:
            raise ValueError(f"feature moments need (N >= 1, D) pooled features, got shape {tuple(features.shape)}")
        wide = features.double()
        return cls(len(features), wide.sum(0), wide.square().sum(0))

    def __add__(self, other: FeatureMoments) -> FeatureMoments:
        if self.total.shape != other.total.shape:
            raise ValueError(f"feature moments of {self.total.numel()} and {other.total.numel()} dimensions")
        return FeatureMoments(self.count + other.count, self.total + other.total, self.squares + other.squares)

    def to_arrays(self) -> dict[str, torch.Tensor]:
        return {"count": torch.tensor([self.count], dtype=torch.float64), "total": self.total, "squares": self.squares}

    @classmethod
    def from_arrays(cls, arrays: dict[str, torch.Tensor], source: str) -> FeatureMoments:
        """Moments received from ``source`` (named in errors); refuses missing, mis-shaped or non-finite ones."""
        if not {"count", "total", "squares"} <= arrays.keys():
            raise ValueError(f"feature moments from {source}: expected count, total and squares, got {sorted(arrays)}")
        count, total, squares = arrays["count"], arrays["total"].double(), arrays["squares"].double()
        if count.numel() != 1 or count.item() < 1 or total.ndim != 1 or squares.shape != total.shape:
            raise ValueError(f"feature moments from {source}: count {count.tolist()}, total {tuple(total.shape)}, "
                             f"squares {tuple(squares.shape)}; expected a count >= 1 and two (D,) vectors")
        if not (torch.isfinite(total).all() and torch.isfinite(squares).all()):
            raise ValueError(f"feature moments from {source}: not finite")
        return cls(int(count.item()), total, squares)


    def to_sum_blocks(self) -> dict[str, np.ndarray]:
        """The moments as the float64 blocks of a secure sum (``omnirad.secure_sum``)."""
        return {key: value.numpy().ravel() for key, value in self.to_arrays().items()}

    @classmethod
    def from_sum(cls, sums: Mapping[str, np.ndarray], source: str) -> FeatureMoments:
        """The pooled moments a secure sum of ``to_sum_blocks`` gave, checked as a total: the blocks
        of ``from_arrays``, a whole count, sums of squares that are not negative and not below what
        the sums imply (Cauchy-Schwarz: n sum x^2 >= (sum x)^2, up to rounding). ``ValueError`` otherwise."""
        moments = cls.from_arrays({key: torch.from_numpy(np.asarray(value, dtype=np.float64).copy())
                                   for key, value in sums.items()}, source)
        count = float(np.asarray(sums["count"]).reshape(()))
        if count != round(count):
            raise ValueError(f"feature moments from {source}: a count of {count!r} images, not a whole number")
        slack = 1e-9 * (moments.count * moments.squares).abs().clamp_min(1.0)
        if (moments.squares < 0).any() or (moments.count * moments.squares - moments.total.square() < -slack).any():
            raise ValueError(f"feature moments from {source}: sums of squares below what the sums imply")
        return moments


@dataclass(frozen=True)
class Standardisation:
    """One mean and standard deviation per feature dimension, the same for every participant."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def from_moments(cls, moments: FeatureMoments) -> Standardisation:
        mean = moments.total / moments.count
        variance = (moments.squares / moments.count - mean.square()).clamp_min(0.0)
        return cls(mean.float(), variance.sqrt().clamp_min(MIN_STD).float())

    def to_config(self) -> dict[str, list[float]]:
        return {FEATURE_MEAN: self.mean.tolist(), FEATURE_STD: self.std.tolist()}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Standardisation | None:
        if FEATURE_MEAN not in config:
            return None
        return cls(torch.tensor(config[FEATURE_MEAN], dtype=torch.float32), torch.tensor(config[FEATURE_STD], dtype=torch.float32))

    def to_arrays(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean.contiguous(), "std": self.std.contiguous()}

    @classmethod
    def from_arrays(cls, arrays: dict[str, torch.Tensor]) -> Standardisation:
        return cls(arrays["mean"].float(), arrays["std"].float())


class StandardisedHead(nn.Module):
    """A head that reads ``(features - mean) / std``; the statistics are fixed buffers set by
    ``set_standardisation``, never trained or exchanged as adapter tensors."""

    mean: torch.Tensor  # buffers, registered in __init__
    std: torch.Tensor

    def __init__(self, head: nn.Module, in_dim: int) -> None:
        super().__init__()
        self.head = head
        self.register_buffer("mean", torch.zeros(in_dim), persistent=False)
        self.register_buffer("std", torch.ones(in_dim), persistent=False)
        self.ready = False

    def set_standardisation(self, standardisation: Standardisation) -> None:
        if standardisation.mean.shape != self.mean.shape or standardisation.std.shape != self.std.shape:
            raise ValueError(f"feature standardisation of {standardisation.mean.numel()} dimensions for a head "
                             f"reading {self.mean.numel()}")
        self.mean, self.std = standardisation.mean.clone(), standardisation.std.clone()
        self.ready = True

    def closed_form_inputs(self, features: torch.Tensor) -> torch.Tensor:
        """What the wrapped head's output layer reads, from standardised features."""
        return closed_form_head(self.head).closed_form_inputs((features - self.mean) / self.std)

    def set_closed_form(self, weight: torch.Tensor, bias: torch.Tensor, scale: float) -> None:
        closed_form_head(self.head).set_closed_form(weight, bias, scale)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if not self.ready:
            raise RuntimeError("model.standardise-features: the head has no feature statistics yet (the server "
                               "sends them with every round's instructions)")
        return cast(torch.Tensor, self.head((features - self.mean) / self.std))
