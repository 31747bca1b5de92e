"""Lightweight adapters trained on top of the frozen encoder, and the state a site exchanges.

A site sends exactly its adapter's trainable state, by name; encoder weights never travel.
Normalisation layers are LayerNorm, not BatchNorm, so that DP-SGD (opacus) can train them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

import torch
from torch import nn


class LinearHead(nn.Module):
    """A linear probe: the reference for how much the encoder's features already separate."""

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)


class MLPHead(nn.Module):
    """A two-layer head with LayerNorm: more capacity when features are not linearly separable."""

    def __init__(self, in_dim: int, num_classes: int, hidden_dim: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(in_dim),
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, num_classes),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


def create_adapter(name: str, in_dim: int, num_classes: int, hidden_dim: int = 256) -> nn.Module:
    """Build a classification adapter by name (``linear`` or ``mlp``)."""
    if name == "linear":
        return LinearHead(in_dim, num_classes)
    if name == "mlp":
        return MLPHead(in_dim, num_classes, hidden_dim)
    raise ValueError(f"model.adapter: unknown adapter '{name}'; known: linear, mlp")


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
