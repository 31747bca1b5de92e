"""The state a site exchanges: exactly its adapter's trainable tensors, by name; encoder weights never travel."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

import torch
from torch import nn


def trainable_state(module: nn.Module) -> OrderedDict[str, torch.Tensor]:
    """The tensors a site sends: every trainable parameter, by name, detached on the CPU."""
    return OrderedDict(
        (name, param.detach().cpu().clone()) for name, param in module.named_parameters() if param.requires_grad
    )


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """What tensors weigh in memory and on the wire: elements x element size."""
    return sum(t.numel() * t.element_size() for t in tensors)


def load_trainable_state(module: nn.Module, state: dict[str, torch.Tensor], optional: frozenset[str] = frozenset()) -> None:
    """Load received adapter tensors; any missing, extra or mis-shaped tensor is an error, except
    that tensors named in ``optional`` may be absent (the module keeps its own values for them)."""
    expected = {name: p for name, p in module.named_parameters() if p.requires_grad}
    missing, unexpected = expected.keys() - state.keys() - optional, state.keys() - expected.keys()
    if missing or unexpected:
        raise KeyError(f"adapter state mismatch: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
    with torch.no_grad():
        for name, param in expected.items():
            if name not in state:
                continue
            if state[name].shape != param.shape:
                raise ValueError(f"adapter tensor '{name}': shape {tuple(state[name].shape)}, expected {tuple(param.shape)}")
            param.copy_(state[name])
