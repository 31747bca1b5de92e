"""OmniFM-style spectral alignment, reconstructed: spectral prompts on the frozen encoder.

OmniFM (Liu et al., CVPR 2026) rests on one observation: the low-frequency part of an image's
Fourier amplitude is similar across imaging modalities and carries coarse anatomy. Neither its
code nor its equations are public; this module rebuilds the four parts the paper names from
their descriptions, and every choice below is ours:

- **Spectral embedding.** The log-amplitude of the 2D Fourier transform of the grey image, its
  central ``size x size`` block after ``fftshift`` (the lowest frequencies), L2-normalised.
- **Global spectral knowledge bank.** Each site summarises its embeddings as a few k-means
  centroids (``spectral.prototypes``, each the mean of at least ``MIN_IMAGES_PER_PROTOTYPE``
  images) and sends only those, once; the server stacks every site's centroids into the bank and
  sends it back with every round's instructions.
- **Prefix-suffix spectral prompting.** For each image the ``spectral.top-k`` bank entries most
  similar (cosine) to its own embedding are projected by a shared linear layer into prefix tokens
  (global cues); ``spectral.suffix-tokens`` free tokens are appended at the end of the sequence and
  stay at the site (personal cues). The encoder stays frozen; the tokens change what its blocks
  compute, so this adapter reads images and cannot use the feature cache.
- **Spectral-proximal alignment.** A FedProx term on the shared tensors whose weight grows with
  how far the site's spectra lie from the bank: ``mu * (1 + d)``, ``d = 1 - cos(site mean,
  bank mean)``. Sites whose imaging differs most are held closest to the global adapter, where
  plain averaging suffers most from their conflicting updates.

What the centroids could reveal: the average low-frequency amplitude of groups of a site's images,
which says what kind of scanner and contrast the site has and the rough size and brightness of its
anatomy; no phase leaves the site, so no image can be rebuilt from it, but the imaging modality
and protocol of a site are exposed to the server and, through the bank, to the other sites.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import numpy as np
import torch
from sklearn.cluster import KMeans
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from omnirad.config.schema import Config
from omnirad.encoders import FrozenEncoder
from omnirad.errors import require
from omnirad.images import images_to_tensor
from omnirad.methods.registry import SITE_METHODS, SiteMethod
from omnirad.protocol import SPECTRAL_BANK, SPECTRAL_BANK_ROWS

MIN_IMAGES_PER_PROTOTYPE = 10  # no centroid summarises fewer images than this


def spectral_embeddings(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, size * size) low-frequency log-amplitudes of (N, C, H, W) images (uint8, or float in [0, 1])."""
    grey = images.float().mean(dim=1)
    if images.dtype == torch.uint8:
        grey = grey / 255.0
    amplitude = torch.fft.fftshift(torch.fft.fft2(grey, norm="ortho"), dim=(-2, -1)).abs()
    h, w = amplitude.shape[-2:]
    top, left = h // 2 - size // 2, w // 2 - size // 2
    block = torch.log1p(amplitude[:, top : top + size, left : left + size]).flatten(1)
    return nn.functional.normalize(block, dim=1)


def embed_images(images: np.ndarray, size: int, batch_size: int = 256) -> torch.Tensor:
    """``spectral_embeddings`` of a site's stored uint8 images, in batches (FFTs of large images are big)."""
    return torch.cat([spectral_embeddings(images_to_tensor(images[i : i + batch_size]), size)
                      for i in range(0, len(images), batch_size)])


def site_prototypes(images: np.ndarray, size: int, count: int, seed: int) -> torch.Tensor:
    """The compact summary a site sends: k-means centroids of its images' spectral embeddings."""
    embeddings = embed_images(images, size)
    clusters = max(1, min(count, len(embeddings) // MIN_IMAGES_PER_PROTOTYPE))
    kmeans = KMeans(n_clusters=clusters, n_init=4, random_state=seed).fit(embeddings.numpy())
    sizes = np.bincount(kmeans.labels_, minlength=clusters)
    centroids = torch.from_numpy(kmeans.cluster_centers_[sizes >= MIN_IMAGES_PER_PROTOTYPE]).float()
    if len(centroids) == 0:  # too few images to cluster privately: one centroid of all of them
        centroids = embeddings.mean(dim=0, keepdim=True)
    return nn.functional.normalize(centroids, dim=1)


def alignment_weight(site_images: np.ndarray, bank: torch.Tensor, size: int) -> float:
    """``1 + d`` with ``d = 1 - cos(site's mean embedding, bank mean)``: the factor on mu."""
    site_mean = embed_images(site_images, size).mean(dim=0)
    return 1.0 + float(1.0 - nn.functional.cosine_similarity(site_mean, bank.mean(dim=0), dim=0))


def bank_to_config(bank: torch.Tensor) -> dict[str, list[float] | int]:
    """The bank as Flower ConfigRecord values (a flat float list): it rides on every instruction."""
    return {SPECTRAL_BANK: bank.flatten().tolist(), SPECTRAL_BANK_ROWS: len(bank)}


def bank_from_config(config: Mapping[str, Any]) -> torch.Tensor | None:
    if SPECTRAL_BANK not in config:
        return None
    return torch.tensor(config[SPECTRAL_BANK], dtype=torch.float32).view(int(config[SPECTRAL_BANK_ROWS]), -1)


class SpectralPromptClassifier(nn.Module):
    """The frozen encoder with retrieved spectral prefix tokens and personal suffix tokens, and a head.

    Trainable: the projection of bank entries to tokens and the head (federated), the suffix tokens
    (``personal_keys``: they stay at the site). The bank is a buffer set by ``set_bank``.
    """

    personal_keys = frozenset({"suffix"})

    def __init__(self, encoder: FrozenEncoder, head: nn.Module, *, spectral_size: int, top_k: int,
                 suffix_tokens: int) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head
        self.spectral_size, self.top_k = spectral_size, top_k
        dim = encoder.num_features
        self.prior_to_tokens = nn.Linear(spectral_size * spectral_size, dim)
        self.suffix = nn.Parameter(torch.randn(suffix_tokens, dim) * 0.02) if suffix_tokens else None
        self.register_buffer("bank", torch.zeros(0, spectral_size * spectral_size), persistent=False)

    def set_bank(self, bank: torch.Tensor) -> None:
        if bank.ndim != 2 or bank.shape[1] != self.spectral_size**2 or len(bank) < self.top_k:
            raise ValueError(f"spectral bank of shape {tuple(bank.shape)}: expected (>= {self.top_k}, {self.spectral_size ** 2})")
        self.bank = bank.float()

    def prefix_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(B, top_k, D): the bank entries nearest each image's spectrum, as tokens."""
        if len(self.bank) == 0:
            raise RuntimeError("the spectral bank is empty: the server sends it with every round (set_bank)")
        similarity = spectral_embeddings(images, self.spectral_size) @ self.bank.T
        return cast(torch.Tensor, self.prior_to_tokens(self.bank[similarity.topk(self.top_k, dim=1).indices]))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        vit = cast(VisionTransformer, self.encoder.vit)  # its timm internals are used below
        # timm has no public hook for extra tokens: these are forward_features' steps, with the
        # prompts placed after the class/register tokens and at the end of the sequence.
        x = vit.norm_pre(vit._pos_embed(vit.patch_embed(self.encoder.preprocess(images))))
        cls = vit.num_prefix_tokens
        parts = [x[:, :cls], self.prefix_tokens(images), x[:, cls:]]
        if self.suffix is not None:
            parts.append(self.suffix.unsqueeze(0).expand(len(x), -1, -1))
        x = torch.cat(parts, dim=1)
        return cast(torch.Tensor, self.head(vit.forward_head(vit.norm(vit.blocks(x)), pre_logits=True)))


def check_spectral(cfg: Config) -> None:
    """The spectral keys, checked only when the strategy is spectral (a one-site test federation has no bank)."""
    from omnirad.adapters import HEADS

    d, sp = cfg.data, cfg.spectral
    require(cfg.model.adapter in HEADS, "model.adapter", cfg.model.adapter,
            f"{' or '.join(HEADS)} with strategy.name=spectral (the head on the spectrally prompted encoder)")
    require(2 <= sp.frequency_size <= d.size, "spectral.frequency-size", sp.frequency_size, f"from 2 to data.size ({d.size})")
    require(sp.prototypes >= 1, "spectral.prototypes", sp.prototypes, ">= 1")
    require(1 <= sp.top_k and (not d.num_sites or sp.top_k <= d.num_sites), "spectral.top-k", sp.top_k,
            f"from 1 to data.num-sites ({d.num_sites or 'the federation size'}): the bank holds at least one entry "
            "per site")
    require(sp.suffix_tokens >= 0, "spectral.suffix-tokens", sp.suffix_tokens, ">= 0")


def prompted_model(head: nn.Module, encoder: FrozenEncoder, cfg: Config) -> nn.Module:
    spectral = cfg.spectral
    return SpectralPromptClassifier(encoder, head, spectral_size=spectral.frequency_size, top_k=spectral.top_k,
                                    suffix_tokens=spectral.suffix_tokens)


SITE_METHODS.add("spectral", SiteMethod(
    model=prompted_model,
    proximal_scale=lambda images, bank, cfg: alignment_weight(images, bank, cfg.spectral.frequency_size),
    check=check_spectral,
    scale_metric="alignment-weight",
))
