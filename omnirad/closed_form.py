"""Closed-form heads from sums: the pooled solution, exactly, whatever the split.

With a frozen encoder a head reads fixed features, so what fitting its output layer needs from the
data can be a handful of sums: per-class feature sums and counts (a nearest-class-mean head,
FedNCM: Legate et al., 2023) and the feature Gram matrix (ridge regression, Fed3R: Fanì et al.,
ICML 2024). Sums over sites are the pooled sums, so the server's solution is the one pooling the
images would give, in one round and whatever the split. Sites sum in float64 and the server adds
in float64, so adding many sites loses nothing.

On the wire the symmetric Gram matrix is its packed upper triangle: float64 (exact), or float32 as
the symmetric square root of the site's scatter about its own mean (``ROOT_UPPER``). Rounding a
square root perturbs the Gram matrix's small eigen-directions, which ridge regression's solution
is most sensitive to, by about sqrt(eigenvalue) x the rounding instead of the largest eigenvalue x
the rounding: on 2,048 random features float32 rounding of the Gram matrix itself moved the pooled
predictions by 9e-3, of the root by 6e-6 (docs/heads.md). A site sends float32 only where its own
solve keeps its predictions within ``SITE_FLOAT32_CHECK`` of the float64 one.

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
FIRST_MOMENTS = ("num-samples", "feature-sum", "label-counts", "label-sums")  # always float64 on the wire
GRAM_UPPER = "gram-upper"  # float64: the Gram matrix's upper triangle, row by row (exact)
ROOT_UPPER = "scatter-root-upper"  # float32: the upper triangle of the site's scatter matrix's symmetric square root
FLOAT32_TOLERANCE = 1e-4  # float32 statistics must solve to predictions this close to the float64 ones
# A site checks its own solve against a quarter of that: on the embedded data the pooled solve moved
# 0.4 to 0.7 times as much as the most-moved site's (4 sites; 192, 1,024 and 2,048 features).
SITE_FLOAT32_CHECK = FLOAT32_TOLERANCE / 4
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


def packed_size(dim: int) -> int:
    """Numbers in the upper triangle of a (dim, dim) matrix, diagonal included."""
    return dim * (dim + 1) // 2


def pack_upper(matrix: torch.Tensor) -> torch.Tensor:
    """The upper triangle of a symmetric matrix, row by row: what is sent of it, once."""
    rows, cols = torch.triu_indices(len(matrix), len(matrix))
    return matrix[rows, cols]


def unpack_upper(packed: torch.Tensor, dim: int) -> torch.Tensor:
    """The symmetric float64 (dim, dim) matrix whose upper triangle ``pack_upper`` gave."""
    matrix = torch.zeros(dim, dim, dtype=torch.float64)
    rows, cols = torch.triu_indices(dim, dim)
    upper = packed.double()
    matrix[rows, cols] = upper
    matrix[cols, rows] = upper
    return matrix


def symmetric_root(matrix: torch.Tensor) -> torch.Tensor:
    """The symmetric positive semi-definite square root of a symmetric PSD matrix (negative
    rounding in its eigenvalues taken as 0): a function of the matrix alone, so sending it tells no
    more than the matrix would."""
    values, vectors = torch.linalg.eigh(matrix)
    root: torch.Tensor = (vectors * values.clamp_min(0.0).sqrt()) @ vectors.T
    return (root + root.T) / 2


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
        """The sums of these examples, in float64; the Gram matrix made exactly symmetric (a matrix
        product leaves its two triangles a rounding apart), so that its upper triangle is all of it."""
        x, y = inputs.double(), targets.double()
        gram = x.T @ x if with_gram else None
        return cls(torch.tensor(float(len(x)), dtype=torch.float64), x.sum(0), y.sum(0), y.T @ x,
                   None if gram is None else (gram + gram.T) / 2)

    def __add__(self, other: HeadStatistics) -> HeadStatistics:
        gram = None if self.gram is None or other.gram is None else self.gram + other.gram
        return HeadStatistics(self.num_samples + other.num_samples, self.feature_sum + other.feature_sum,
                              self.label_counts + other.label_counts, self.label_sums + other.label_sums, gram)

    def first_moments(self) -> dict[str, torch.Tensor]:
        """Everything but the Gram matrix, by wire name (float64)."""
        return dict(zip(FIRST_MOMENTS, (self.num_samples.reshape(1), self.feature_sum, self.label_counts,
                                        self.label_sums), strict=True))

    def scatter(self) -> torch.Tensor:
        """The Gram matrix about these examples' own mean: sum (x - m)(x - m)^T."""
        if self.gram is None:
            raise ValueError("no Gram matrix")
        return self.gram - torch.outer(self.feature_sum, self.feature_sum) / self.num_samples

    def to_arrays(self, *, float32: bool = False) -> dict[str, torch.Tensor]:
        """What a site sends in the clear: the float64 first moments and the Gram matrix's packed
        upper triangle, float64, or (``float32``) the packed root of its scatter about the mean."""
        arrays = self.first_moments()
        if self.gram is None:
            return arrays
        if float32:
            return {**arrays, ROOT_UPPER: pack_upper(symmetric_root(self.scatter())).float()}
        return {**arrays, GRAM_UPPER: pack_upper(self.gram)}

    @classmethod
    def of_arrays(cls, arrays: Mapping[str, torch.Tensor], *, dim: int, num_classes: int) -> HeadStatistics:
        """The float64 statistics ``to_arrays`` sent, unchecked: a root of the scatter is squared and
        the mean's part added back (sum x sum x^T / n, from the float64 sums), in float64."""
        count = arrays["num-samples"].double().reshape(())
        feature_sum = arrays["feature-sum"].double()
        gram = None
        if GRAM_UPPER in arrays:
            gram = unpack_upper(arrays[GRAM_UPPER], dim)
        elif ROOT_UPPER in arrays:
            root = unpack_upper(arrays[ROOT_UPPER], dim)
            square = root @ root
            gram = (square + square.T) / 2 + torch.outer(feature_sum, feature_sum) / count
        return cls(count, feature_sum, arrays["label-counts"].double(),
                   arrays["label-sums"].double().reshape(num_classes, dim), gram)

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, torch.Tensor], *, source: str, dim: int, num_classes: int,
                    with_gram: bool, num_examples: float, single_label: bool, noisy: bool = False) -> HeadStatistics:
        """Statistics received from ``source``, checked: exactly the named sums in their precision,
        their shapes, finite values, counts that match the site's ``num_examples``, and a positive
        semi-definite Gram matrix (a root's square is one by construction; ``noisy``: DP noise makes
        neither exact, so only shapes and finiteness are checked, and a root, which needs the exact
        count, is refused)."""
        allowed = ({GRAM_UPPER} if noisy else {GRAM_UPPER, ROOT_UPPER}) if with_gram else set()
        grams = set(arrays) & allowed
        if set(arrays) - grams != set(FIRST_MOMENTS) or len(grams) != int(with_gram):
            wanted = f" and one of {sorted(allowed)}" if with_gram else ""
            raise ValueError(f"head statistics from {source}: expected exactly {list(FIRST_MOMENTS)}{wanted}, "
                             f"got {sorted(arrays)}")
        shapes = {"num-samples": (1,), "feature-sum": (dim,), "label-counts": (num_classes,),
                  "label-sums": (num_classes, dim), GRAM_UPPER: (packed_size(dim),), ROOT_UPPER: (packed_size(dim),)}
        for key, value in arrays.items():
            if tuple(value.shape) != shapes[key]:
                raise ValueError(f"head statistics from {source}: '{key}' has shape {tuple(value.shape)}, "
                                 f"expected {shapes[key]}")
            precision = torch.float32 if key == ROOT_UPPER else torch.float64
            if value.dtype != precision:
                raise ValueError(f"head statistics from {source}: '{key}' is {value.dtype}, expected {precision}")
            if not torch.isfinite(value).all():
                raise ValueError(f"head statistics from {source}: '{key}' holds NaN or Inf")
        if ROOT_UPPER in arrays and float(arrays["num-samples"][0]) < 1:
            raise ValueError(f"head statistics from {source}: a scatter root needs at least one example")
        stats = cls.of_arrays(arrays, dim=dim, num_classes=num_classes)
        if not noisy:
            stats.check_consistent(source, num_examples, single_label, check_gram=ROOT_UPPER not in arrays)
        return stats

    def check_consistent(self, source: str, num_examples: float, single_label: bool, *,
                         check_gram: bool = True) -> None:
        """Counts that match ``num_examples`` (and, one label each, add up to it) and, with
        ``check_gram``, a symmetric positive semi-definite Gram matrix; ``ValueError`` otherwise."""
        n = float(self.num_samples)
        if n != num_examples:
            raise ValueError(f"head statistics from {source}: {n:g} examples, but the site reports {num_examples:g}")
        if (self.label_counts < 0).any() or (single_label and float(self.label_counts.sum()) != n):
            raise ValueError(f"head statistics from {source}: label counts {self.label_counts.tolist()} do not "
                             f"fit {n:g} examples")
        if self.gram is not None and check_gram:
            if not torch.allclose(self.gram, self.gram.T, rtol=1e-9, atol=1e-9):
                raise ValueError(f"head statistics from {source}: the Gram matrix is not symmetric")
            smallest = float(torch.linalg.eigvalsh(self.gram).min())
            if smallest < -GRAM_TOLERANCE * max(1.0, float(self.gram.diagonal().sum())):
                raise ValueError(f"head statistics from {source}: the Gram matrix is not positive semi-definite "
                                 f"(smallest eigenvalue {smallest:.3g})")

    def to_sum_blocks(self) -> dict[str, np.ndarray]:
        """The statistics as the float64 blocks of a secure sum (``omnirad.secure_sum``): the Gram
        matrix as its upper triangle (``gram-upper``), half the words of the full matrix."""
        return {key: value.numpy().ravel() for key, value in self.to_arrays().items()}

    @classmethod
    def from_sum_blocks(cls, sums: Mapping[str, np.ndarray], *, source: str, dim: int, num_classes: int,
                        with_gram: bool, single_label: bool, noisy: bool = False) -> HeadStatistics:
        """The statistics a secure sum of ``to_sum_blocks`` gave, checked as a pooled sum: exactly the
        named blocks and sizes, finite, and (without DP noise) a whole number of examples that the
        label counts add up to and a positive semi-definite Gram matrix. ``ValueError`` otherwise."""
        sizes = {"num-samples": 1, "feature-sum": dim, "label-counts": num_classes, "label-sums": num_classes * dim,
                 **({GRAM_UPPER: packed_size(dim)} if with_gram else {})}
        got = {key: int(np.asarray(value).size) for key, value in sums.items()}
        if got != sizes:
            raise ValueError(f"head statistics from {source}: expected blocks {sizes}, got {got}")
        if not all(np.isfinite(value).all() for value in sums.values()):
            raise ValueError(f"head statistics from {source}: NaN or Inf")
        tensor = {key: torch.from_numpy(np.asarray(value, dtype=np.float64)) for key, value in sums.items()}
        stats = cls.of_arrays(tensor, dim=dim, num_classes=num_classes)
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


def solve_deviation(stats: HeadStatistics, sent: Mapping[str, torch.Tensor],
                    solve: Callable[[HeadStatistics], tuple[torch.Tensor, torch.Tensor]], inputs: torch.Tensor) -> float:
    """The largest absolute difference, over ``inputs``, between the predictions (x W^T + b) of the
    solution of ``stats`` and of the solution the server reads from ``sent`` (``to_arrays``): how
    much the wire's precision moves the solve; infinite without inputs to measure it on."""
    if not len(inputs):
        return math.inf
    received = HeadStatistics.of_arrays(sent, dim=stats.feature_sum.numel(), num_classes=stats.label_counts.numel())
    x = inputs.double()
    exact, rounded = (x @ weight.T + bias for weight, bias in (solve(stats), solve(received)))
    return float((exact - rounded).abs().max())


AUTO_RANDOM_FEATURES = 2048  # the random-features width ``auto`` offers: the best head measured (docs/heads.md)


@dataclass(frozen=True)
class AutoHead:
    """What ``model.head-init=auto`` picks where the closed form needs no other decision: the head
    (``mlp`` with ``hidden_dim`` random features, or ``linear``), its closed form, and why."""

    adapter: str
    hidden_dim: int | None  # the random features, for ``mlp``
    head_init: str
    reason: str


def statistics_bytes(dim: int, num_classes: int, *, float32: bool) -> int:
    """Bytes of the numbers a site sends for a ridge head on ``dim`` inputs: the float64 first
    moments and the Gram matrix's packed upper triangle, at 4 or 8 bytes a number."""
    return 8 * (1 + dim + num_classes + num_classes * dim) + (4 if float32 else 8) * packed_size(dim)


def auto_head(features: int, num_classes: int, budget_bytes: int) -> AutoHead:
    """Random features (the MLP head's closed form on ``features`` hidden units, the pooled-equal
    head on every split measured) where their statistics fit ``budget_bytes`` per site even in
    float64, the precision a site falls back to when float32 would move its solve; else the
    linear head's closed form, whose statistics grow with the encoder's width only."""
    worst = statistics_bytes(features, num_classes, float32=False)
    packed32 = statistics_bytes(features, num_classes, float32=True)
    sizes = (f"the ridge statistics of {features:,} random features take {packed32:,} bytes per site in float32, "
             f"{worst:,} in float64")
    if worst <= budget_bytes:
        return AutoHead("mlp", features, "ridge", f"random features: {sizes}, within the budget of {budget_bytes:,}")
    return AutoHead("linear", None, "ridge", f"linear closed form: {sizes}, over the budget of {budget_bytes:,}")


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
