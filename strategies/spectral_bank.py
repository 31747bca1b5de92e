"""The server's half of spectral alignment: ask every site once for its spectral centroids.

Flower's strategies only train and evaluate, so the bank is gathered with one ``query.spectral``
message per site before the first round and then rides on every round's instructions
(``omnirad.spectral.bank_to_config``).
"""

from __future__ import annotations

import torch
from flwr.serverapp import Grid

from strategies.site_queries import ask_every_site


def collect_spectral_bank(grid: Grid, embedding_size: int, timeout: float = 600.0) -> torch.Tensor:
    """Every connected site's centroids stacked into the bank (rows, ``embedding_size``).

    Raises ``RuntimeError`` naming the site when a reply is missing, failed, or is not a finite
    (rows, ``embedding_size``) array: a bad bank would silently steer every site's prompts.
    """
    parts = []
    for node, content in ask_every_site(grid, "spectral", "spectral bank", timeout).items():
        arrays = content.get("arrays")
        if arrays is None or "prototypes" not in arrays:
            raise RuntimeError(f"spectral bank: node {node} replied without 'prototypes'")
        centroids = torch.from_numpy(arrays["prototypes"].numpy())
        if centroids.ndim != 2 or centroids.shape[1] != embedding_size or not torch.isfinite(centroids).all():
            raise RuntimeError(f"spectral bank: node {node} sent centroids of shape {tuple(centroids.shape)}, "
                               f"expected finite (rows, {embedding_size})")
        parts.append(centroids.float())
    return torch.cat(parts)
