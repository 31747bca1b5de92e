"""The frozen foundation encoder: one factory, a registry of names, timm underneath.

Every encoder is a timm Vision Transformer. Weights come from a local file, from the Hugging Face
hub when a network is there, or are random (with a loud warning, because results then say nothing
about a pretrained encoder). The encoder is frozen: no gradients, always in eval mode.
"""

from __future__ import annotations

import hashlib
import logging
import math
import pickle
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

import timm
import torch
from safetensors import SafetensorError
from timm.data.config import resolve_data_config
from torch import nn

from omnirad.registry import Registry

log = logging.getLogger(__name__)

HUB_PREFIX = "hf_hub:"
RANDOM_INIT_SEED = 0  # every participant must build the same random encoder
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
# What reading a damaged or foreign weights file raises: safetensors its own error; torch.load of a
# .pth/.pt/.bin the unpickler's, the zip reader's and an unpickled object's that is not a state dict.
DAMAGED_WEIGHTS = (RuntimeError, KeyError, ValueError, OSError, SafetensorError, pickle.UnpicklingError, EOFError,
                   zipfile.BadZipFile, AttributeError, IndexError, TypeError)


@dataclass(frozen=True)
class EncoderSpec:
    """What a registry name means: the timm architecture and where its weights are published."""

    timm_name: str
    patch_size: int
    hub_id: str | None = None


ENCODERS: Registry[EncoderSpec] = Registry("model.encoder")
ENCODERS.add("omnirad-small", EncoderSpec("vit_small_patch14_dinov2", 14, "hf_hub:Snarcy/OmniRad-small"))
ENCODERS.add("omnirad-base", EncoderSpec("vit_base_patch14_dinov2", 14, "hf_hub:Snarcy/OmniRad-base"))
ENCODERS.add("radiodino-s16", EncoderSpec("vit_small_patch16_224", 16, "hf_hub:Snarcy/RadioDino-s16"))
# CPU-sized, for demos and tests: ViT-Tiny with 8 px patches, so 64 px images give 8x8 tokens.
ENCODERS.add("vit-tiny", EncoderSpec("vit_tiny_patch16_224", 8))


class EncoderWeightsError(RuntimeError):
    """Encoder weights could not be found or do not fit the architecture."""


class FrozenEncoder(nn.Module):
    """A timm ViT that never trains, with the input geometry and normalisation it expects."""

    mean: torch.Tensor  # buffers, registered in __init__
    std: torch.Tensor
    _fingerprint: str  # feature_cache.encoder_fingerprint's cache, set on first use

    def __init__(self, vit: nn.Module, name: str, patch_size: int, input_size: int) -> None:
        super().__init__()
        self.vit = vit
        self.name = name
        self.patch_size = patch_size
        self.input_size = input_size
        data_cfg = resolve_data_config({}, model=vit)  # type: ignore[no-untyped-call]  # timm leaves it unannotated
        self.register_buffer("mean", torch.tensor(data_cfg["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(data_cfg["std"]).view(1, 3, 1, 1), persistent=False)
        for param in self.vit.parameters():
            param.requires_grad_(False)
        self.eval()

    @property
    def num_features(self) -> int:
        return int(self.vit.num_features)  # type: ignore[arg-type]  # timm sets an int; typed Tensor | Module

    @property
    def depth(self) -> int:
        return len(self.vit.blocks)  # type: ignore[arg-type]  # an nn.Sequential, typed Tensor | Module

    def train(self, mode: bool = True) -> FrozenEncoder:
        """Stay in eval mode: dropout and stochastic depth would make frozen features noisy."""
        return super().train(False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        return encoder_input(images, self.mean, self.std, self.input_size)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled image features (B, D): the class token after the final norm."""
        return cast(torch.Tensor, self.vit(self.preprocess(images)))

    @torch.no_grad()
    def patch_tokens(self, images: torch.Tensor, layers: list[int]) -> list[torch.Tensor]:
        """Patch tokens of the given blocks (0-based), each (B, D, H/patch, W/patch)."""
        # a timm VisionTransformer method; nn.Module.__getattr__ types it Tensor | Module
        return cast(list[torch.Tensor], self.vit.forward_intermediates(  # type: ignore[operator]
            self.preprocess(images), indices=layers, intermediates_only=True, output_fmt="NCHW"
        ))


def encoder_input(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, input_size: int) -> torch.Tensor:
    """Grey-scale or RGB images, (B, C, H, W) uint8 or floats in [0, 1], to normalised encoder input."""
    if images.dtype == torch.uint8:
        images = images.float().div_(255.0)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    if images.shape[-1] != input_size or images.shape[-2] != input_size:
        images = nn.functional.interpolate(images, size=(input_size, input_size), mode="bilinear", align_corners=False)
    return (images - mean) / std


def encoder_input_size(image_size: int, patch_size: int) -> int:
    """The image size rounded up to whole patches (timm ViTs need it divisible)."""
    return int(math.ceil(image_size / patch_size) * patch_size)


def create_encoder(name: str, weights: str = "", image_size: int = 224) -> FrozenEncoder:
    """Build a frozen encoder by registry name.

    ``weights``: a local ``.safetensors``/``.pt``/``.pth``/``.bin`` file; ``hf_hub:<org>/<repo>``
    or ``hub`` (the encoder's published weights) to load from the Hugging Face hub; empty for a
    random initialisation, seeded so that the server and every site build the same encoder.
    Position embeddings are resized to ``image_size``.
    """
    spec = ENCODERS[name]
    input_size = encoder_input_size(image_size, spec.patch_size)
    if input_size // spec.patch_size < 4:
        log.warning(
            "%s sees only %dx%d patches at %d px: resize the images (data.size) for useful features",
            name, input_size // spec.patch_size, input_size // spec.patch_size, image_size,
        )
    kwargs = dict(num_classes=0, img_size=input_size, dynamic_img_size=True)
    if spec.patch_size != _timm_patch_size(spec.timm_name):
        kwargs["patch_size"] = spec.patch_size
    vit = _build_vit(name, spec, weights, kwargs)
    return FrozenEncoder(vit, name, spec.patch_size, input_size)


def weights_fingerprint(weights: str) -> str:
    """What identifies an encoder's weights across a federation: the SHA-256 of a local file (what
    ``sha256sum`` prints), or ``random-init`` / the hub name when there is no file."""
    if not weights:
        return "random-init"
    if weights == "hub" or weights.startswith(HUB_PREFIX):
        return weights
    path = Path(weights).expanduser()
    stat = path.stat()
    return _file_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=8)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """Hashed once per process while the file stays the same (size and modification time)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _timm_patch_size(timm_name: str) -> int:
    return int(timm_name.split("patch")[1].split("_")[0])


def _build_vit(name: str, spec: EncoderSpec, weights: str, kwargs: dict[str, Any]) -> nn.Module:
    if not weights:
        log.warning(
            "!!! %s has RANDOM weights (model.weights is empty): results will NOT reflect a "
            "pretrained encoder. Set model.weights to a local weights file for real use. !!!",
            name,
        )
        with torch.random.fork_rng():
            torch.manual_seed(RANDOM_INIT_SEED)
            return timm.create_model(spec.timm_name, pretrained=False, **kwargs)
    if weights == "hub" or weights.startswith(HUB_PREFIX):
        hub_id = spec.hub_id if weights == "hub" else weights
        if hub_id is None:
            raise EncoderWeightsError(f"model.weights: {name} has no published weights on the hub")
        return _from_hub(spec, hub_id, kwargs)
    return _from_file(spec, Path(weights), kwargs)


def _from_file(spec: EncoderSpec, path: Path, kwargs: dict[str, Any]) -> nn.Module:
    if not path.is_file():
        raise EncoderWeightsError(f"model.weights: file not found: {path}")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise EncoderWeightsError(
            f"model.weights: {path} is not a weights file (expected {', '.join(WEIGHT_SUFFIXES)})"
        )
    try:
        return timm.create_model(
            spec.timm_name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs
        )
    except DAMAGED_WEIGHTS as err:
        raise EncoderWeightsError(
            f"model.weights: {path} does not load into {spec.timm_name} ({type(err).__name__}: {err})"
        ) from err


def _from_hub(spec: EncoderSpec, hub_id: str, kwargs: dict[str, Any]) -> nn.Module:
    """Load from the hub or its local cache; with HF_HUB_OFFLINE=1 an uncached name fails at once."""
    try:
        return timm.create_model(hub_id, pretrained=True, **kwargs)
    except Exception as err:  # noqa: BLE001 - hub clients raise many unrelated error types
        raise EncoderWeightsError(
            f"model.weights: could not load {hub_id} from the hub ({type(err).__name__}: {err}). "
            "Download the weights once where a network is available and set model.weights to the "
            "local .safetensors file."
        ) from err
