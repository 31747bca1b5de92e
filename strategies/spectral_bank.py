"""The server's half of spectral alignment (``strategy.name=spectral``): FedProx, whose weight each
site scales by its spectral distance (``omnirad.spectral``), and the knowledge bank, gathered with
one ``query.spectral`` message per site before the first round; it then rides on every round's
instructions (``omnirad.spectral.bank_to_config``).
"""

from __future__ import annotations

from typing import Any

import torch
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedProx

from omnirad.config import Config
from omnirad.protocol import ARRAYS, QUERY_SPECTRAL
from omnirad_fl.strategies.flower import proximal
from omnirad_fl.strategies.registry import STRATEGIES, StrategySpec
from omnirad_fl.strategies.site_queries import ask_every_site


def collect_spectral_bank(grid: Grid, embedding_size: int, timeout: float = 600.0) -> torch.Tensor:
    """Every connected site's centroids stacked into the bank (rows, ``embedding_size``).

    Raises ``RuntimeError`` naming the site when a reply is missing, failed, or is not a finite
    (rows, ``embedding_size``) array: a bad bank would silently steer every site's prompts.
    """
    parts = []
    for node, content in ask_every_site(grid, QUERY_SPECTRAL, "spectral bank", timeout).items():
        arrays = content.get(ARRAYS)
        if arrays is None or "prototypes" not in arrays:
            raise RuntimeError(f"spectral bank: node {node} replied without 'prototypes'")
        centroids = torch.from_numpy(arrays["prototypes"].numpy())
        if centroids.ndim != 2 or centroids.shape[1] != embedding_size or not torch.isfinite(centroids).all():
            raise RuntimeError(f"spectral bank: node {node} sent centroids of shape {tuple(centroids.shape)}, "
                               f"expected finite (rows, {embedding_size})")
        parts.append(centroids.float())
    return torch.cat(parts)


def prepare_bank(grid: Grid, cfg: Config) -> dict[str, Any]:
    bank = collect_spectral_bank(grid, cfg.spectral.frequency_size ** 2)
    print(f"Spectral knowledge bank: {len(bank)} centroids from {cfg.data.num_sites} sites", flush=True)
    return {"bank": bank}


STRATEGIES.add("spectral", StrategySpec(FedProx, proximal, proximal=True, prepare=prepare_bank))
