"""Augmented views of radiographs for self-supervised learning.

Views suit radiographs: random resized crops, flips, blur and grey-level changes (contrast,
brightness, gamma), no colour jitter or solarisation.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms import v2

from omnirad.images import images_to_tensor


class RadiologyViews:
    """Random global crops of grey-scale or RGB images (uint8, N x H x W[ x C]) as floats in [0, 1],
    with flips, blur and grey-level changes only."""

    def __init__(self, size: int, scale: tuple[float, float]) -> None:
        self.geometry = v2.Compose([v2.RandomResizedCrop(size, scale=scale, antialias=True), v2.RandomHorizontalFlip(),
                                    v2.RandomApply([v2.GaussianBlur(kernel_size=5, sigma=(0.1, 1.5))], p=0.5)])

    def __call__(self, images: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        pixels = images_to_tensor(images)
        views = torch.stack([self.geometry(image) for image in pixels])
        count = len(views)
        contrast = 0.6 + 0.8 * torch.rand(count, 1, 1, 1, generator=generator)
        brightness = 0.2 * (torch.rand(count, 1, 1, 1, generator=generator) - 0.5)
        gamma = torch.exp(0.5 * (torch.rand(count, 1, 1, 1, generator=generator) - 0.5))
        mean = views.mean(dim=(1, 2, 3), keepdim=True)
        views = ((views - mean) * contrast + mean + brightness).clamp(0, 1)
        return views.pow(gamma)
