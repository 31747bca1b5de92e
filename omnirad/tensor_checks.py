"""Whether a file's tensors can stand in for a model's: the same names, shapes and dtypes, all
finite. An adapter or checkpoint whose bytes were damaged or replaced (even with a matching
SHA-256 written beside it) is refused with every difference named, before any of it is used."""

from __future__ import annotations

from collections.abc import Mapping

import torch


def state_problems(found: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> list[str]:
    """Every way ``found`` differs from ``expected`` (missing or extra names, shapes, dtypes) and
    every tensor of it that holds NaN or infinite values; empty when it may be loaded."""
    problems = [f"missing tensor {k!r}" for k in expected if k not in found]
    problems += [f"a tensor the model does not have: {k!r}" for k in found if k not in expected]
    for key in found.keys() & expected.keys():
        got, want = found[key], expected[key]
        if tuple(got.shape) != tuple(want.shape) or got.dtype != want.dtype:
            problems.append(f"{key!r} is {got.dtype} {tuple(got.shape)}, the model's is {want.dtype} {tuple(want.shape)}")
    problems += [f"{key!r} holds NaN or infinite values" for key, value in found.items()
                 if value.is_floating_point() and not bool(torch.isfinite(value).all())]
    return problems
