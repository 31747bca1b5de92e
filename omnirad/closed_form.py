"""Closed-form heads from sums: the pooled solution, exactly, whatever the split.

With a frozen encoder a head reads fixed features, so what fitting its output layer needs from the
data can be a handful of sums: per-class feature sums and counts (a nearest-class-mean head,
FedNCM: Legate et al., 2023) and the feature Gram matrix (ridge regression, Fed3R: Fanì et al.,
ICML 2024). Sums over sites are the pooled sums, so the server's solution is the one pooling the
images would give, in one round and whatever the split. Sums are float64, so adding many sites
loses nothing.

Statistics are taken of what the head's output layer reads (``closed_form_inputs``): the features
for a linear or cosine head, the hidden layer of an MLP head at its shared initialisation (a fixed
random feature map, in the spirit of Fed3R's random-features variant). The softmax fine-tuning
that can follow (``+ft``: the usual rounds) starts from the solution with its logits scaled by a
temperature; sites report the pooled training likelihood at a few temperatures, again as sums, and
the server keeps the best (Fed3R+FT calibrates the temperature the same way, centrally).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, cast

import numpy as np
import torch
from torch import nn

from omnirad.config.schema import ModelConfig
from omnirad.registry import Registry
from omnirad.tasks import TaskSpec

SECURE_SUM_STATISTICS = "head-statistics"  # privacy.secure-sum: the statistics' purpose (omnirad.secure_sum)
SECURE_SUM_SCALE = "logit-scale"  # privacy.secure-sum: the temperature losses' purpose
GRAM_TOLERANCE = 1e-6  # relative: a Gram matrix's smallest eigenvalue may be this far below 0 (rounding)
SCALES = tuple(round(10 ** (k / 8), 4) for k in range(-4, 21))  # logit scales tried: 0.32 to 316


class ClosedFormHead(Protocol):
    """A head whose output layer can be set from a closed-form solution."""

    def closed_form_inputs(self, features: torch.Tensor) -> torch.Tensor:
        """What the output layer reads, for these features (the head as initialised)."""
        ...

    def set_closed_form(self, weight: torch.Tensor, bias: torch.Tensor, scale: float) -> None:
        """Output layer := ``scale`` x (``weight``, ``bias``)."""
        ...


def closed_form_head(model: nn.Module) -> ClosedFormHead:
    """The model as a closed-form head; ``TypeError`` for a model that is not one (LoRA, decoders)."""
    if not (hasattr(model, "closed_form_inputs") and hasattr(model, "set_closed_form")):
        raise TypeError(f"{type(model).__name__} has no closed-form output layer")
    return cast(ClosedFormHead, model)


@dataclass(frozen=True)
class HeadStatistics:
    """What a site sends for a closed-form head: float64 sums over its training examples of the
    head's inputs x and targets y (one-hot, or 0/1 per label): their number, sum x, sum y,
    sum y x^T and, for ridge regression, sum x x^T. No single example can be read back from them
    (with DP, not even its presence; ``private_statistics``)."""

    num_samples: torch.Tensor  # ()
    feature_sum: torch.Tensor  # (D,)
    label_counts: torch.Tensor  # (C,)
    label_sums: torch.Tensor  # (C, D)
    gram: torch.Tensor | None  # (D, D), or None when the solution needs no second moments

    @classmethod
    def of(cls, inputs: torch.Tensor, targets: torch.Tensor, *, with_gram: bool) -> HeadStatistics:
        x, y = inputs.double(), targets.double()
        return cls(torch.tensor(float(len(x)), dtype=torch.float64), x.sum(0), y.sum(0), y.T @ x,
                   x.T @ x if with_gram else None)

    def __add__(self, other: HeadStatistics) -> HeadStatistics:
        gram = None if self.gram is None or other.gram is None else self.gram + other.gram
        return HeadStatistics(self.num_samples + other.num_samples, self.feature_sum + other.feature_sum,
                              self.label_counts + other.label_counts, self.label_sums + other.label_sums, gram)

    def to_arrays(self) -> dict[str, torch.Tensor]:
        arrays = {"num-samples": self.num_samples.reshape(1), "feature-sum": self.feature_sum,
                  "label-counts": self.label_counts, "label-sums": self.label_sums}
        return {**arrays, "gram": self.gram} if self.gram is not None else arrays

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.to_arrays().values())

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, torch.Tensor], *, source: str, dim: int, num_classes: int,
                    with_gram: bool, num_examples: float, single_label: bool, noisy: bool = False) -> HeadStatistics:
        """Statistics received from ``source``, checked: exactly the named sums, their shapes, finite
        values, counts that match the site's ``num_examples``, and a positive semi-definite Gram
        matrix (``noisy``: DP noise makes neither exact, so only shapes and finiteness are checked)."""
        expected = {"num-samples", "feature-sum", "label-counts", "label-sums"} | ({"gram"} if with_gram else set())
        if set(arrays) != expected:
            raise ValueError(f"head statistics from {source}: expected exactly {sorted(expected)}, got {sorted(arrays)}")
        shapes = {"num-samples": (1,), "feature-sum": (dim,), "label-counts": (num_classes,),
                  "label-sums": (num_classes, dim), "gram": (dim, dim)}
        for key, value in arrays.items():
            if tuple(value.shape) != shapes[key]:
                raise ValueError(f"head statistics from {source}: '{key}' has shape {tuple(value.shape)}, "
                                 f"expected {shapes[key]}")
            if not torch.isfinite(value).all():
                raise ValueError(f"head statistics from {source}: '{key}' holds NaN or Inf")
        stats = cls(arrays["num-samples"].double().reshape(()), arrays["feature-sum"].double(),
                    arrays["label-counts"].double(), arrays["label-sums"].double(),
                    arrays["gram"].double() if with_gram else None)
        if not noisy:
            stats.check_consistent(source, num_examples, single_label)
        return stats

    def check_consistent(self, source: str, num_examples: float, single_label: bool) -> None:
        n = float(self.num_samples)
        if n != num_examples:
            raise ValueError(f"head statistics from {source}: {n:g} examples, but the site reports {num_examples:g}")
        if (self.label_counts < 0).any() or (single_label and float(self.label_counts.sum()) != n):
            raise ValueError(f"head statistics from {source}: label counts {self.label_counts.tolist()} do not "
                             f"fit {n:g} examples")
        if self.gram is not None:
            if not torch.allclose(self.gram, self.gram.T, rtol=1e-9, atol=1e-9):
                raise ValueError(f"head statistics from {source}: the Gram matrix is not symmetric")
            smallest = float(torch.linalg.eigvalsh(self.gram).min())
            if smallest < -GRAM_TOLERANCE * max(1.0, float(self.gram.diagonal().sum())):
                raise ValueError(f"head statistics from {source}: the Gram matrix is not positive semi-definite "
                                 f"(smallest eigenvalue {smallest:.3g})")


    def to_sum_blocks(self) -> dict[str, np.ndarray]:
        """The statistics as the float64 blocks of a secure sum (``omnirad.secure_sum``): the Gram
        matrix as its upper triangle (``gram-upper``), half the words of the full matrix."""
        blocks = {key: value.numpy().ravel() for key, value in self.to_arrays().items() if key != "gram"}
        if self.gram is not None:
            rows, cols = np.triu_indices(self.gram.shape[0])
            blocks["gram-upper"] = self.gram.numpy()[rows, cols]
        return blocks

    @classmethod
    def from_sum_blocks(cls, sums: Mapping[str, np.ndarray], *, source: str, dim: int, num_classes: int,
                        with_gram: bool, single_label: bool, noisy: bool = False) -> HeadStatistics:
        """The statistics a secure sum of ``to_sum_blocks`` gave, checked as a pooled sum: exactly the
        named blocks and sizes, finite, and (without DP noise) a whole number of examples that the
        label counts add up to and a positive semi-definite Gram matrix. ``ValueError`` otherwise."""
        sizes = {"num-samples": 1, "feature-sum": dim, "label-counts": num_classes, "label-sums": num_classes * dim,
                 **({"gram-upper": dim * (dim + 1) // 2} if with_gram else {})}
        got = {key: int(np.asarray(value).size) for key, value in sums.items()}
        if got != sizes:
            raise ValueError(f"head statistics from {source}: expected blocks {sizes}, got {got}")
        if not all(np.isfinite(value).all() for value in sums.values()):
            raise ValueError(f"head statistics from {source}: NaN or Inf")
        gram = None
        if with_gram:
            gram = torch.zeros(dim, dim, dtype=torch.float64)
            rows, cols = torch.triu_indices(dim, dim)
            upper = torch.from_numpy(np.asarray(sums["gram-upper"], dtype=np.float64))
            gram[rows, cols], gram[cols, rows] = upper, upper
        tensor = {key: torch.from_numpy(np.asarray(value, dtype=np.float64)) for key, value in sums.items()}
        stats = cls(tensor["num-samples"].reshape(()), tensor["feature-sum"], tensor["label-counts"],
                    tensor["label-sums"].reshape(num_classes, dim), gram)
        if not noisy:
            count = float(stats.num_samples)
            if count < 1 or count != round(count):
                raise ValueError(f"head statistics from {source}: {count!r} examples, not a whole number >= 1")
            stats.check_consistent(source, count, single_label)
        return stats


def ridge_solution(stats: HeadStatistics, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights (C, D) and bias (C,) minimising ||X W + b - Y||^2 + lam ||W||^2 (the bias not
    penalised), from the pooled sums alone, in float64."""
    if stats.gram is None:
        raise ValueError("ridge regression needs the Gram matrix")
    dim = stats.feature_sum.numel()
    gram = torch.zeros(dim + 1, dim + 1, dtype=torch.float64)
    gram[:dim, :dim], gram[:dim, dim], gram[dim, :dim], gram[dim, dim] = (
        stats.gram, stats.feature_sum, stats.feature_sum, stats.num_samples)
    targets = torch.cat([stats.label_sums.T, stats.label_counts[None]], dim=0)  # (D + 1, C)
    penalty = torch.full((dim + 1,), lam, dtype=torch.float64)
    penalty[dim] = 0.0
    solution = torch.linalg.solve(gram + torch.diag(penalty), targets)
    return solution[:dim].T.contiguous(), solution[dim].contiguous()


def class_means(stats: HeadStatistics) -> tuple[torch.Tensor, torch.Tensor]:
    """One prototype per class, the mean of its examples (a class without examples keeps 0), no bias."""
    means = stats.label_sums / stats.label_counts.clamp_min(1.0)[:, None]
    return means, torch.zeros(len(means), dtype=torch.float64)


@dataclass(frozen=True)
class HeadInit:
    """A closed-form initialisation: the sums it needs, the heads it fits, and its solution."""

    with_gram: bool
    heads: tuple[str, ...]  # the model.adapter values it can initialise
    solve: Callable[[HeadStatistics, ModelConfig], tuple[torch.Tensor, torch.Tensor]]
    default_scale: Callable[[int], float]  # a data-free logit scale, used when calibration is not private


def one_hot_scale(num_classes: int) -> float:
    """The scale at which an output of 1 for the true class and 0 for the others gives it p = 0.9."""
    return math.log(0.9 * max(1, num_classes - 1) / 0.1)


RANDOM_INIT = "random"
AUTO_INIT = "auto"  # resolved when the configuration loads (omnirad.configure.resolve_head_init)
HEAD_INITS: Registry[HeadInit | None] = Registry("model.head-init")
HEAD_INITS.add(RANDOM_INIT, None)  # the heads' own random initialisation: no statistics phase
HEAD_INITS.add("ridge", HeadInit(True, ("linear", "mlp"), lambda stats, m: ridge_solution(stats, m.ridge_lambda),
                                 one_hot_scale))
HEAD_INITS.add("ncm", HeadInit(False, ("cosine",), lambda stats, m: class_means(stats),
                               lambda num_classes: 10.0 * one_hot_scale(num_classes)))


def statistics_targets(task: TaskSpec, labels: np.ndarray) -> torch.Tensor:
    """Targets as the closed form regresses them: one-hot classes, or the 0/1 labels themselves."""
    targets = task.targets(labels)
    return targets if task.multi_label else nn.functional.one_hot(targets, task.num_outputs)


@torch.no_grad()
def head_inputs(head: ClosedFormHead, features: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """What the output layer reads for every example, in batches, with the head in eval mode."""
    module = cast(nn.Module, head)
    module.eval()
    return torch.cat([head.closed_form_inputs(features[i : i + batch_size]) for i in range(0, len(features), batch_size)])


def clip_rows(x: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Each row scaled to L2 norm at most ``max_norm``: the per-example bound DP needs."""
    norms = x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return cast(torch.Tensor, x * (max_norm / norms).clamp(max=1.0))


def statistics_sensitivity(max_norm: float, with_gram: bool) -> float:
    """L2 sensitivity of all the sums together to one example (added or removed) whose inputs have
    norm at most ``max_norm`` and whose target is one-hot: its count (1), inputs (C), target (1),
    target x inputs (C) and, with a Gram matrix, the upper triangle of x x^T (at most C^2)."""
    return math.sqrt(2.0 + 2.0 * max_norm**2 + (max_norm**4 if with_gram else 0.0))


def private_statistics(inputs: torch.Tensor, targets: torch.Tensor, *, with_gram: bool, max_norm: float,
                       noise_multiplier: float, generator: torch.Generator) -> HeadStatistics:
    """The Gaussian mechanism on the sums: inputs clipped to ``max_norm`` per example, then noise of
    standard deviation ``noise_multiplier`` x sensitivity on every released number (the Gram
    matrix's upper triangle, mirrored, so it stays symmetric). One release: the site's accountant
    records it as one step at sampling rate 1 with this noise multiplier."""
    clean = HeadStatistics.of(clip_rows(inputs.double(), max_norm), targets, with_gram=with_gram)
    std = noise_multiplier * statistics_sensitivity(max_norm, with_gram)

    def noisy(t: torch.Tensor) -> torch.Tensor:
        return t + std * torch.randn(t.shape, generator=generator, dtype=torch.float64)

    gram = None
    if clean.gram is not None:
        upper = torch.triu(noisy(clean.gram))
        gram = upper + upper.T - torch.diag(upper.diagonal())
    return HeadStatistics(noisy(clean.num_samples), noisy(clean.feature_sum), noisy(clean.label_counts),
                          noisy(clean.label_sums), gram)


@torch.no_grad()
def scaled_likelihood(head: nn.Module, features: torch.Tensor, task: TaskSpec, labels: np.ndarray,
                      scales: tuple[float, ...]) -> torch.Tensor:
    """Summed loss (cross-entropy, or binary cross-entropy per label) of the head's logits on these
    images times each scale, float64 (S,): the sums from which the server picks the pooled best scale."""
    head.eval()
    logits = torch.cat([head(features[i : i + 1024]) for i in range(0, len(features), 1024)]).double()
    targets = task.targets(labels)
    losses = []
    for scale in scales:
        if task.multi_label:
            loss = nn.functional.binary_cross_entropy_with_logits(scale * logits, targets.double(), reduction="sum")
        else:
            loss = nn.functional.cross_entropy(scale * logits, targets, reduction="sum")
        losses.append(loss)
    return torch.stack(losses)
