"""A site's on-disk cache of frozen-encoder features, so images are encoded once, not every round.

In deployment each message starts a fresh ClientApp process, so features kept in memory die with
it; on disk they survive. An entry is keyed by everything that determines the features: the
encoder's weights (a fingerprint of every tensor), its input geometry and normalisation, what is
stored (pooled features or the patch tokens of which blocks), and the image bytes. A change to any of them is a different key, so stale features are never read. Writes
go to a temporary file that is renamed into place, so an interrupted encode never leaves an entry
that loads.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from omnirad.encoders import FrozenEncoder

log = logging.getLogger(__name__)


def encoder_fingerprint(encoder: FrozenEncoder) -> str:
    """A hash of the encoder's weights and of how it turns images into input (computed once)."""
    cached = getattr(encoder, "_fingerprint", None)
    if cached is None:
        digest = hashlib.sha256()
        digest.update(f"{encoder.name}|{encoder.input_size}|{encoder.patch_size}".encode())
        digest.update(encoder.mean.cpu().numpy().tobytes() + encoder.std.cpu().numpy().tobytes())
        for name, tensor in encoder.vit.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        cached = digest.hexdigest()
        encoder._fingerprint = cached
    return cached


def cache_key(encoder: FrozenEncoder, images: np.ndarray, kind: str = "pooled") -> str:
    """``kind`` names what is stored: pooled features, or the patch tokens of which blocks."""
    digest = hashlib.sha256(encoder_fingerprint(encoder).encode())
    digest.update(kind.encode())
    digest.update(f"{images.shape}|{images.dtype}".encode())
    digest.update(np.ascontiguousarray(images).tobytes())
    return digest.hexdigest()[:40]


def cached_features(cache_dir: str | Path, encoder: FrozenEncoder, images: np.ndarray,
                    encode: Callable[[], torch.Tensor], *, kind: str = "pooled") -> torch.Tensor:
    """Features from the cache when an entry for exactly these weights, images and kind exists, else encode and store."""
    cache_dir = Path(cache_dir).expanduser()
    path = cache_dir / f"{cache_key(encoder, images, kind)}.safetensors"
    if path.is_file():
        try:
            features = load_file(path)["features"]
            log.info("feature cache hit: %s (%d images)", path.name, len(features))
            return features
        except (SafetensorError, KeyError, OSError) as err:  # unreadable entry: encode again and replace it
            log.warning("feature cache entry %s is unreadable (%s); encoding again", path, err)
    features = encode()
    cache_dir.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file({"features": features.contiguous()}, temporary)
        os.replace(temporary, path)  # atomic on POSIX: readers see the old state or the whole entry
    finally:
        temporary.unlink(missing_ok=True)
    return features
