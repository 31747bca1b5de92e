"""What a site trains on the frozen encoder: heads, LoRA, full fine-tuning, segmentation and caption decoders.

Importing this package registers every adapter (``ADAPTERS``) and head (``HEADS``).
"""

# Each module registers its adapters, in the order they are listed to users: heads first.
from omnirad.adapters import heads  # noqa: F401

# isort: split
from omnirad.adapters import caption_decoder, decoder, finetune  # noqa: F401
from omnirad.adapters.registry import (
    ADAPTERS,
    HEADS,
    IMAGES,
    POOLED,
    TOKENS,
    AdapterSpec,
    ModelRecipe,
    create_head,
)
from omnirad.adapters.state import load_trainable_state, tensor_bytes, trainable_state

__all__ = ["ADAPTERS", "HEADS", "IMAGES", "POOLED", "TOKENS", "AdapterSpec", "ModelRecipe", "create_head",
           "load_trainable_state", "tensor_bytes", "trainable_state"]
