"""Classification heads on the frozen encoder's pooled features (``linear``, ``mlp``, ``cosine``).

Normalisation layers are LayerNorm, not BatchNorm, so that DP-SGD (opacus) can train them.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from omnirad.adapters.registry import ADAPTERS, HEADS, POOLED, AdapterSpec, ModelRecipe, create_head


class LinearHead(nn.Module):
    """A linear probe: the reference for how much the encoder's features already separate."""

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.fc(features))

    def closed_form_inputs(self, features: torch.Tensor) -> torch.Tensor:
        return features

    @torch.no_grad()
    def set_closed_form(self, weight: torch.Tensor, bias: torch.Tensor, scale: float) -> None:
        self.fc.weight.copy_(scale * weight)
        self.fc.bias.copy_(scale * bias)


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
        return cast(torch.Tensor, self.net(features))

    def closed_form_inputs(self, features: torch.Tensor) -> torch.Tensor:
        """The hidden layer, as initialised: a fixed random feature map the output layer reads."""
        return cast(torch.Tensor, self.net[:-1](features))

    @torch.no_grad()
    def set_closed_form(self, weight: torch.Tensor, bias: torch.Tensor, scale: float) -> None:
        output = cast(nn.Linear, self.net[-1])
        output.weight.copy_(scale * weight)
        output.bias.copy_(scale * bias)


class CosineHead(nn.Module):
    """Cosine similarity of the features to one prototype per class, times a trainable scale:
    the nearest-class-mean classifier (FedNCM) when the prototypes are the class means."""

    def __init__(self, in_dim: int, num_classes: int, scale: float = 10.0) -> None:
        super().__init__()
        self.prototypes = nn.Parameter(0.02 * torch.randn(num_classes, in_dim))
        self.scale = nn.Parameter(torch.tensor(scale))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        cosine = nn.functional.normalize(features, dim=1) @ nn.functional.normalize(self.prototypes, dim=1).T
        return self.scale * cosine

    def closed_form_inputs(self, features: torch.Tensor) -> torch.Tensor:
        return features

    @torch.no_grad()
    def set_closed_form(self, weight: torch.Tensor, bias: torch.Tensor, scale: float) -> None:
        self.prototypes.copy_(weight)
        self.scale.fill_(scale)


HEADS.add("linear", lambda in_dim, outputs, model: LinearHead(in_dim, outputs))
HEADS.add("mlp", lambda in_dim, outputs, model: MLPHead(in_dim, outputs, model.hidden_dim))
HEADS.add("cosine", lambda in_dim, outputs, model: CosineHead(in_dim, outputs))


def _head_on_features(name: str) -> AdapterSpec:
    def build(recipe: ModelRecipe) -> nn.Module:
        return create_head(name, recipe.encoder.num_features, recipe.task.num_outputs, recipe.model)

    return AdapterSpec(POOLED, segmentation=False, build=build, segmentation_twin="decoder",
                       captioning_twin="caption-decoder")


ADAPTERS.add("linear", _head_on_features("linear"))
ADAPTERS.add("mlp", _head_on_features("mlp"))
ADAPTERS.add("cosine", _head_on_features("cosine"))
