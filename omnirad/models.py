"""What a site trains for ``model.adapter``, and what it feeds the model.

Heads read the encoder's pooled features and the decoder its multi-layer patch tokens: both are
fixed while the encoder is frozen, so a site computes them once (and, with ``model.feature-cache``,
keeps them on disk). LoRA and full fine-tuning change the encoder, so they read the images.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from omnirad.adapters import create_adapter
from omnirad.config import SEGMENTATION_ADAPTERS, SPECTRAL, Config, ConfigError, comma_list
from omnirad.data.sites import task_info
from omnirad.decoder import SegmentationDecoder, default_token_layers
from omnirad.encoders import FrozenEncoder
from omnirad.feature_cache import cached_features
from omnirad.finetune import ImageClassifier, ImageSegmenter, LoraSettings
from omnirad.spectral import SpectralPromptClassifier
from omnirad.standardise import StandardisedHead
from omnirad.training import encode

log = logging.getLogger(__name__)

POOLED, TOKENS, IMAGES = "pooled features", "patch tokens", "images"
INPUTS = {"linear": POOLED, "mlp": POOLED, "decoder": TOKENS, "lora": IMAGES, "full": IMAGES, "lora-decoder": IMAGES}


def model_reads(cfg: Config) -> str:
    """What the configured model takes as input; spectral prompts change the encoder's work: images."""
    return IMAGES if cfg.strategy.name == SPECTRAL else INPUTS[cfg.model.adapter]


def token_layers(cfg: Config, encoder: FrozenEncoder) -> list[int]:
    """The 0-based encoder blocks whose tokens the decoder reads."""
    if not cfg.model.decoder_layers:
        return default_token_layers(encoder.depth)
    layers = [int(block) - 1 for block in comma_list(cfg.model.decoder_layers)]
    if max(layers) >= encoder.depth:
        raise ConfigError(
            f"bad value for configuration key 'model.decoder-layers': {cfg.model.decoder_layers!r} "
            f"({cfg.model.encoder} has blocks 1 to {encoder.depth})"
        )
    return sorted(set(layers))


def lora_settings(cfg: Config) -> LoraSettings:
    m = cfg.model
    return LoraSettings(m.lora_rank, m.lora_alpha, m.lora_dropout, tuple(comma_list(m.lora_targets)))


def build_model(cfg: Config, encoder: FrozenEncoder) -> nn.Module:
    """A freshly initialised model, seeded by ``run.seed`` so that every participant builds the same one."""
    m, task = cfg.model, task_info(cfg)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.run.seed)
        if cfg.strategy.name == SPECTRAL:
            s = cfg.spectral
            head = create_adapter(m.adapter, encoder.num_features, task.num_outputs, m.hidden_dim)
            return SpectralPromptClassifier(encoder, head, s.frequency_size, s.top_k, s.suffix_tokens)
        if m.adapter in SEGMENTATION_ADAPTERS:
            layers = token_layers(cfg, encoder)
            decoder = SegmentationDecoder(encoder.num_features, len(layers), task.num_outputs, cfg.data.size, m.decoder_width)
            return decoder if m.adapter == "decoder" else ImageSegmenter(encoder, decoder, layers, lora_settings(cfg))
        if INPUTS[m.adapter] == IMAGES:
            head = create_adapter(m.head, encoder.num_features, task.num_outputs, m.hidden_dim)
            return ImageClassifier(encoder, head, lora_settings(cfg) if m.adapter == "lora" else None)
        head = create_adapter(m.adapter, encoder.num_features, task.num_outputs, m.hidden_dim)
        return StandardisedHead(head, encoder.num_features) if m.standardise_features else head


def model_inputs(cfg: Config, encoder: FrozenEncoder, images: np.ndarray, desc: str, use_cache: bool = True) -> torch.Tensor:
    """What the configured model reads for these images: features, tokens, or the images themselves."""
    kind = model_reads(cfg)
    if kind == IMAGES:
        if cfg.model.feature_cache:
            log.warning("model.feature-cache is ignored for model.adapter=%s with strategy.name=%s: the encoder's "
                        "output changes every step, so there are no fixed features to cache; every round runs "
                        "the encoder", cfg.model.adapter, cfg.strategy.name)
        tensor = torch.from_numpy(np.ascontiguousarray(images))
        return tensor.unsqueeze(1) if tensor.ndim == 3 else tensor.permute(0, 3, 1, 2).contiguous()
    layers = token_layers(cfg, encoder) if kind == TOKENS else None

    def run() -> torch.Tensor:
        return encode(encoder, images, desc=desc, token_layers=layers)

    if not (use_cache and cfg.model.feature_cache):
        return run()
    key = "pooled" if layers is None else "tokens:" + ",".join(map(str, layers))
    return cached_features(cfg.model.cache_dir, encoder, images, run, kind=key)
