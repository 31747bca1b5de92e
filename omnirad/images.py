"""Images as sites store them (uint8 arrays) to the tensors models read: one conversion for all."""

from __future__ import annotations

import numpy as np
import torch


def images_to_tensor(images: np.ndarray, *, as_float: bool = True) -> torch.Tensor:
    """uint8 images, (N, H, W) grey or (N, H, W, C) colour, as (N, C, H, W): floats in [0, 1], or
    (``as_float=False``) the uint8 values themselves, a quarter of the memory, for models that
    convert each batch (``encoder_input``)."""
    tensor = torch.from_numpy(np.ascontiguousarray(images))
    tensor = tensor.unsqueeze(1) if tensor.ndim == 3 else tensor.permute(0, 3, 1, 2)
    return tensor.float().div_(255.0) if as_float else tensor.contiguous()
