"""The model a site trains for the configuration, and what it feeds that model.

Heads read the encoder's pooled features and the decoder its multi-layer patch tokens: both are
fixed while the encoder is frozen, so a site computes them once (and, with ``model.feature-cache``,
keeps them on disk). LoRA, full fine-tuning and a strategy's site-side prompts change what the
encoder computes, so those models read the images.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from omnirad.adapters import ADAPTERS, IMAGES, TOKENS, ModelRecipe
from omnirad.adapters.decoder import token_layers
from omnirad.config.schema import Config
from omnirad.data.sites import task_info
from omnirad.devices import placement_for
from omnirad.encoders import FrozenEncoder, create_encoder
from omnirad.feature_cache import cached_features
from omnirad.images import images_to_tensor
from omnirad.methods import site_method
from omnirad.personalization import local_keys
from omnirad.standardise import StandardisedHead
from omnirad.training import encode

if TYPE_CHECKING:
    from omnirad.broadcast import Broadcast

log = logging.getLogger(__name__)


@lru_cache(maxsize=2)
def shared_encoder(name: str, weights: str, image_size: int) -> FrozenEncoder:
    """One encoder per process and configuration: it is frozen, so every site can share it."""
    return create_encoder(name, weights, image_size)


def encoder_for(cfg: Config) -> FrozenEncoder:
    return shared_encoder(cfg.model.encoder, cfg.model.weights, cfg.data.size)


def new_model(cfg: Config, broadcast: Broadcast | None = None) -> nn.Module:
    """The configured model, freshly initialised and identical in every participant; with what the
    server broadcasts (the spectral bank, the feature standardisation) set on it."""
    model = build_model(cfg, encoder_for(cfg))
    return broadcast.apply(model) if broadcast is not None else model


def kept_at_sites(cfg: Config, model: nn.Module | None = None) -> frozenset[str]:
    """The configured model's tensors that stay at each site (personalization, spectral suffix)."""
    return local_keys(model if model is not None else new_model(cfg), cfg.personalization.mode, cfg.model.adapter)


def model_reads(cfg: Config) -> str:
    """What the configured model takes as input: a strategy's site-side model reads images."""
    return IMAGES if site_method(cfg.strategy) is not None else ADAPTERS[cfg.model.adapter].reads


def build_model(cfg: Config, encoder: FrozenEncoder) -> nn.Module:
    """A freshly initialised model, seeded by ``run.seed`` so that every participant builds the same one."""
    recipe = ModelRecipe(cfg.model, encoder, task_info(cfg.data), cfg.data.size)
    method = site_method(cfg.strategy)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.run.seed)
        model = ADAPTERS[cfg.model.adapter].build(recipe)
        if method is not None:
            return method.model(model, encoder, cfg)
        return StandardisedHead(model, encoder.num_features) if cfg.model.standardise_features else model


def model_inputs(cfg: Config, encoder: FrozenEncoder, images: np.ndarray, desc: str, *,
                 use_cache: bool = True) -> torch.Tensor:
    """What the configured model reads for these images: features, tokens, or the images themselves."""
    kind = model_reads(cfg)
    if kind == IMAGES:
        if cfg.model.feature_cache:
            log.warning("model.feature-cache is ignored for model.adapter=%s with strategy.name=%s: the encoder's "
                        "output changes every step, so there are no fixed features to cache; every round runs "
                        "the encoder", cfg.model.adapter, cfg.strategy.name)
        return images_to_tensor(images, as_float=False)
    layers = token_layers(cfg.model, encoder.depth) if kind == TOKENS else None

    def run() -> torch.Tensor:
        return encode(encoder, images, desc=desc, token_layers=layers, placement=placement_for(cfg.run))

    if not (use_cache and cfg.model.feature_cache):
        return run()
    key = "pooled" if layers is None else "tokens:" + ",".join(map(str, layers))
    precision = placement_for(cfg.run).precision
    if precision != "fp32":  # mixed-precision features are not the float32 ones: their own entries
        key += f"|{precision}"
    return cached_features(cfg.model.cache_dir, encoder, images, run, kind=key)
