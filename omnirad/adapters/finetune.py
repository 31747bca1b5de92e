"""Adapting the encoder itself: LoRA (through peft) or full fine-tuning, with a trainable head.

Both train on images, not on cached features, because the encoder changes every step. LoRA adds
low-rank updates to the attention and MLP linear layers and exchanges only those and the head;
full fine-tuning exchanges every weight and is the reference that the light adapters are measured
against. The head is always trainable (OmniRad's reference code leaves it frozen at its random
initialisation under LoRA, which caps accuracy for no reason).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
from safetensors.torch import save_file
from torch import nn

from omnirad.adapters.decoder import new_decoder, token_layers
from omnirad.adapters.registry import ADAPTERS, IMAGES, AdapterSpec, ModelRecipe, create_head
from omnirad.config.io import comma_list
from omnirad.config.schema import ModelConfig
from omnirad.encoders import FrozenEncoder, encoder_input

if TYPE_CHECKING:
    from peft import LoraConfig

LORA_TARGETS = ("qkv", "proj", "fc1", "fc2")  # timm ViT block linears: attention in/out, MLP in/out


@dataclass(frozen=True)
class LoraSettings:
    """OmniRad's reference defaults: rank 16, alpha 32, on attention and MLP linear layers."""

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.1
    targets: tuple[str, ...] = LORA_TARGETS

    @classmethod
    def of(cls, model: ModelConfig) -> LoraSettings:
        """The LoRA keys of the configuration."""
        return cls(model.lora_rank, model.lora_alpha, model.lora_dropout, tuple(comma_list(model.lora_targets)))

    def peft_config(self) -> LoraConfig:
        from peft import LoraConfig  # imported here: peft is slow to import and only LoRA needs it

        # A pattern rather than names: 'proj' alone would also match the patch embedding's conv.
        pattern = rf".*blocks\.\d+\.(attn|mlp)\.({'|'.join(self.targets)})"
        # peft annotates lora_alpha as int but only divides by it (alpha / r); a float is what it is given
        return LoraConfig(r=self.rank, lora_alpha=self.alpha,  # type: ignore[arg-type]
                          lora_dropout=self.dropout, target_modules=pattern)


ENCODER_MODULE = "backbone"  # the image models' attribute holding the (LoRA-adapted) encoder: its tensors are
# the only ones that mean the same in every task's model (a head of one task means nothing to another)


def adapted_backbone(encoder: FrozenEncoder, lora: LoraSettings | None) -> nn.Module:
    """A copy of the encoder's ViT, LoRA-wrapped or (without ``lora``) entirely trainable."""
    backbone = copy.deepcopy(encoder.vit)
    if lora is None:
        return backbone.requires_grad_(True)
    from peft import get_peft_model

    return get_peft_model(backbone, lora.peft_config())


class ImageClassifier(nn.Module):
    """A trainable copy of the encoder (LoRA-wrapped, or entirely trainable) and a head, on images."""

    mean: torch.Tensor  # buffers, registered in __init__
    std: torch.Tensor

    def __init__(self, encoder: FrozenEncoder, head: nn.Module, lora: LoraSettings | None) -> None:
        super().__init__()
        self.backbone, self.head, self.input_size = adapted_backbone(encoder, lora), head, encoder.input_size
        self.register_buffer("mean", encoder.mean.clone(), persistent=False)
        self.register_buffer("std", encoder.std.clone(), persistent=False)

    @property
    def uses_lora(self) -> bool:
        return hasattr(self.backbone, "merge_and_unload")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.head(self.backbone(encoder_input(images, self.mean, self.std, self.input_size))))

    def merged_encoder(self) -> nn.Module:
        """A plain timm ViT with the LoRA updates folded into its weights (for inference)."""
        backbone = copy.deepcopy(self.backbone)
        return backbone.merge_and_unload() if self.uses_lora else backbone  # type: ignore[operator]  # peft's method

    def export(self, folder: Path) -> tuple[Path, Path]:
        """Write ``encoder.safetensors`` (timm weights, usable as ``model.weights``) and ``head.safetensors``."""
        folder.mkdir(parents=True, exist_ok=True)
        encoder_file, head_file = folder / "encoder.safetensors", folder / "head.safetensors"
        save_file({k: v.contiguous() for k, v in self.merged_encoder().state_dict().items()}, encoder_file)
        save_file({k: v.contiguous() for k, v in self.head.state_dict().items()}, head_file)
        return encoder_file, head_file


class ImageSegmenter(nn.Module):
    """LoRA on the encoder under the segmentation decoder, on images (``model.adapter=lora-decoder``).

    The LoRA tensors carry the same names as an ``ImageClassifier``'s (``backbone.*``), so a
    multi-task federation can average them across classification and segmentation sites.
    """

    mean: torch.Tensor  # buffers, registered in __init__
    std: torch.Tensor

    def __init__(self, encoder: FrozenEncoder, decoder: nn.Module, token_layers: list[int], lora: LoraSettings) -> None:
        super().__init__()
        self.backbone, self.decoder, self.input_size = adapted_backbone(encoder, lora), decoder, encoder.input_size
        self.token_layers = list(token_layers)
        self.register_buffer("mean", encoder.mean.clone(), persistent=False)
        self.register_buffer("std", encoder.std.clone(), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # a timm ViT method (through peft's wrapper); nn.Module.__getattr__ types it Tensor | Module
        tokens = self.backbone.forward_intermediates(  # type: ignore[operator]
            encoder_input(images, self.mean, self.std, self.input_size), indices=self.token_layers,
            intermediates_only=True, output_fmt="NCHW",
        )
        return cast(torch.Tensor, self.decoder(torch.cat(tokens, dim=1)))


def _image_classifier(lora: bool) -> AdapterSpec:
    def build(recipe: ModelRecipe) -> nn.Module:
        head = create_head(recipe.model.head, recipe.encoder.num_features, recipe.task.num_outputs, recipe.model)
        return ImageClassifier(recipe.encoder, head, LoraSettings.of(recipe.model) if lora else None)

    return AdapterSpec(IMAGES, segmentation=False, build=build, segmentation_twin="lora-decoder" if lora else "")


def _lora_segmenter(recipe: ModelRecipe) -> nn.Module:
    decoder = new_decoder(recipe)
    layers = token_layers(recipe.model, recipe.encoder.depth)
    return ImageSegmenter(recipe.encoder, decoder, layers, LoraSettings.of(recipe.model))


ADAPTERS.add("lora", _image_classifier(lora=True))
ADAPTERS.add("full", _image_classifier(lora=False))
ADAPTERS.add("lora-decoder", AdapterSpec(IMAGES, segmentation=True, build=_lora_segmenter))
