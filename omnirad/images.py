"""Images as sites store them (uint8 arrays) to the tensors models read: one conversion for all."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def images_to_tensor(images: np.ndarray, *, as_float: bool = True) -> torch.Tensor:
    """uint8 images, (N, H, W) grey or (N, H, W, C) colour, as (N, C, H, W): floats in [0, 1], or
    (``as_float=False``) the uint8 values themselves, a quarter of the memory, for models that
    convert each batch (``encoder_input``)."""
    tensor = torch.from_numpy(np.ascontiguousarray(images))
    tensor = tensor.unsqueeze(1) if tensor.ndim == 3 else tensor.permute(0, 3, 1, 2)
    return tensor.float().div_(255.0) if as_float else tensor.contiguous()


def resized_images(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 images, (N, H, W) or (N, H, W, 3), at ``size`` x ``size`` (bilinear, antialiased)."""
    if images.shape[1:3] == (size, size):
        return images
    pixels = torch.from_numpy(np.ascontiguousarray(images)).float()
    pixels = pixels.unsqueeze(1) if pixels.ndim == 3 else pixels.permute(0, 3, 1, 2)
    pixels = nn.functional.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    pixels = pixels.round().clamp(0, 255).to(torch.uint8)
    return (pixels[:, 0] if images.ndim == 3 else pixels.permute(0, 2, 3, 1)).numpy()


def resized(images: np.ndarray, masks: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (bilinear) and masks (nearest, so classes stay classes) at ``size`` x ``size``."""
    if images.shape[1:3] == (size, size):
        return images, masks
    labels = nn.functional.interpolate(torch.from_numpy(masks)[:, None].float(), size=(size, size), mode="nearest")
    return resized_images(images, size), labels[:, 0].long().numpy()
