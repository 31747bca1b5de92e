"""A light segmentation decoder on the frozen encoder's multi-layer patch tokens.

A ViT keeps one token grid (image size / patch) at every depth: shallow blocks carry edges and
texture, deep blocks semantics. The decoder projects the tokens of a few blocks (timm's
``forward_intermediates``), fuses them, and upsamples to the image size in learned steps with a
final interpolation. Normalisation is GroupNorm, not BatchNorm: it needs no running statistics,
so it federates cleanly and opacus (DP-SGD) can train it.
"""

from __future__ import annotations

import torch
from torch import nn

from omnirad.adapters.registry import ADAPTERS, TOKENS, AdapterSpec, ModelRecipe
from omnirad.config.io import comma_list
from omnirad.config.schema import ModelConfig
from omnirad.errors import ConfigError

GROUPS = 8


def default_token_layers(depth: int) -> list[int]:
    """Blocks at a third, two thirds and the end of the encoder, 0-based (4/8/12 of 12)."""
    return sorted({max(0, depth // 3 - 1), max(0, 2 * depth // 3 - 1), depth - 1})


def token_layers(model: ModelConfig, depth: int) -> list[int]:
    """The 0-based encoder blocks whose tokens the decoder reads (``model.decoder-layers``)."""
    if not model.decoder_layers:
        return default_token_layers(depth)
    layers = [int(block) - 1 for block in comma_list(model.decoder_layers)]
    if max(layers) >= depth:
        raise ConfigError(
            f"bad value for configuration key 'model.decoder-layers': {model.decoder_layers!r} "
            f"({model.encoder} has blocks 1 to {depth})"
        )
    return sorted(set(layers))


def _conv_block(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.GroupNorm(min(GROUPS, out_channels), out_channels),
        nn.GELU(),
    )


class SegmentationDecoder(nn.Module):
    """Per-pixel class logits from tokens of ``num_layers`` blocks, concatenated on channels.

    Input (B, num_layers * token_dim, h, w), as the feature cache stores it; output
    (B, num_classes, output_size, output_size).
    """

    def __init__(self, token_dim: int, num_layers: int, num_classes: int, output_size: int, *, width: int = 64) -> None:
        super().__init__()
        self.token_dim, self.output_size = token_dim, output_size
        self.project = nn.ModuleList(_conv_block(token_dim, width, 1) for _ in range(num_layers))
        self.fuse = _conv_block(width * num_layers, width, 3)
        self.up1 = _conv_block(width, width // 2, 3)
        self.up2 = _conv_block(width // 2, width // 4, 3)
        self.classify = nn.Conv2d(width // 4, num_classes, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        layers = tokens.split(self.token_dim, dim=1)  # type: ignore[no-untyped-call]  # torch leaves it unannotated
        if len(layers) != len(self.project):
            raise ValueError(f"decoder expects tokens of {len(self.project)} layers, got {len(layers)}")
        x = self.fuse(torch.cat([project(t) for project, t in zip(self.project, layers, strict=True)], dim=1))
        x = self.up1(nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
        x = self.up2(nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
        return nn.functional.interpolate(
            self.classify(x), size=(self.output_size, self.output_size), mode="bilinear", align_corners=False
        )


def new_decoder(recipe: ModelRecipe) -> SegmentationDecoder:
    """The decoder for the configured encoder blocks, task and image size."""
    layers = token_layers(recipe.model, recipe.encoder.depth)
    return SegmentationDecoder(recipe.encoder.num_features, len(layers), recipe.task.num_outputs, recipe.image_size,
                               width=recipe.model.decoder_width)


ADAPTERS.add("decoder", AdapterSpec(TOKENS, segmentation=True, build=new_decoder))
