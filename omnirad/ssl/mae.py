"""MAE-style masked image modelling: the ViT sees a random quarter of the patches and a light
decoder predicts the pixels of the rest."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from omnirad.ssl.objectives import SSL_OBJECTIVES, Learner, Objective


@dataclass(frozen=True)
class MaeSettings:
    mask_ratio: float = 0.75  # share of patches hidden from the encoder
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    crop_scale: tuple[float, float] = (0.5, 1.0)


class PixelDecoder(nn.Module):
    """A light transformer that fills the masked patches back in from the visible ones."""

    def __init__(self, in_dim: int, num_patches: int, patch_pixels: int, s: MaeSettings) -> None:
        super().__init__()
        self.embed = nn.Linear(in_dim, s.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, s.decoder_dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, num_patches, s.decoder_dim))
        self.blocks = nn.Sequential(*[Block(s.decoder_dim, s.decoder_heads) for _ in range(s.decoder_depth)])
        self.norm = nn.LayerNorm(s.decoder_dim)
        self.pred = nn.Linear(s.decoder_dim, patch_pixels)

    def forward(self, visible: torch.Tensor, keep: torch.Tensor, num_patches: int) -> torch.Tensor:
        """Predicted pixels of every patch (B, N, patch_pixels) from the visible tokens at ``keep``."""
        tokens = self.mask_token.expand(len(visible), num_patches, -1).clone()
        tokens.scatter_(1, keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]), self.embed(visible))
        return cast(torch.Tensor, self.pred(self.norm(self.blocks(tokens + self.pos_embed))))


class MaskedAutoencoder(Learner):
    """MAE-style masked image modelling: the ViT sees a random quarter of the patches and a light
    decoder predicts the pixels of the rest, each patch normalised to zero mean and unit variance
    (MAE's normalised-pixel loss, which keeps the model from spending itself on brightness)."""

    def __init__(self, vit: nn.Module, input_size: int, settings: MaeSettings = MaeSettings()) -> None:
        super().__init__()
        self.settings = settings
        self.crop_scale = settings.crop_scale
        self.patch = int(vit.patch_embed.patch_size[0])  # type: ignore[union-attr, index]  # timm ViT attributes
        self.num_patches = (input_size // self.patch) ** 2
        num_features = int(vit.num_features)  # type: ignore[arg-type]  # timm sets an int; typed Tensor | Module
        decoder = PixelDecoder(num_features, self.num_patches, 3 * self.patch**2, settings)
        self.student = nn.ModuleDict({"vit": vit, "decoder": decoder})

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) to (B, N, C*p*p), patches in row-major order as the ViT's tokens."""
        p = self.patch
        b, c, h, w = images.shape
        return images.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // p) * (w // p), -1)

    def loss(self, views: list[torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean squared error on the masked patches of each view (normalised pixels)."""
        return cast(torch.Tensor, sum(self._view_loss(v, generator) for v in views) / len(views))  # sum(): Tensor | int

    def step_loss(self, crops: list[torch.Tensor], step: int, total_steps: int,
                  generator: torch.Generator) -> torch.Tensor:
        return self.loss(crops, generator)

    def _view_loss(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        vit, n = cast(VisionTransformer, self.student["vit"]), self.num_patches  # its timm internals are used below
        tokens = vit._pos_embed(vit.patch_embed(images))  # timm's own embedding, class token first
        prefix = int(vit.num_prefix_tokens)
        num_keep = max(1, round(n * (1 - self.settings.mask_ratio)))
        keep = torch.rand(len(images), n, generator=generator).argsort(dim=1)[:, :num_keep].to(images.device)
        patches = tokens[:, prefix:].gather(1, keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        encoded = vit.norm(vit.blocks(vit.norm_pre(torch.cat([tokens[:, :prefix], patches], dim=1))))
        predicted = self.student["decoder"](encoded[:, prefix:], keep, n)
        target = self.patchify(images)
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
        masked = torch.ones(len(images), n, device=images.device).scatter_(1, keep, 0.0)
        return cast(torch.Tensor, (((predicted - target) ** 2).mean(-1) * masked).sum() / masked.sum())


SSL_OBJECTIVES.add("mae", Objective(MaskedAutoencoder, MaeSettings()))
