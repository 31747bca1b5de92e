"""What a strategy asks of each site besides plain local training: its client-side pieces.

Most strategies need nothing at the site (Flower's FedProx sends its proximal weight with each
round's instructions, and local training adds the term). A strategy that changes the model a site
trains, what it reads, or the weight of its proximal term registers a ``SiteMethod`` under its
``strategy.name``; the server's half is registered with the strategy (``omnirad_fl.strategies``).
A new method's module is imported in ``omnirad/methods/__init__.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from omnirad.config.schema import Config, StrategyConfig
from omnirad.registry import Registry

if TYPE_CHECKING:
    from omnirad.encoders import FrozenEncoder


@dataclass(frozen=True)
class SiteMethod:
    """``model``: the model a site trains, built around the configured head (the encoder's output
    then changes with every step, so the model reads images). ``proximal_scale``: the factor on
    the proximal weight mu, from the site's images and what the server broadcast (``bank``).
    ``check``: the method's configuration checks. ``scale_metric``: the name a site reports the
    factor under."""

    model: Callable[[nn.Module, FrozenEncoder, Config], nn.Module]
    proximal_scale: Callable[[np.ndarray, torch.Tensor, Config], float]
    check: Callable[[Config], None]
    scale_metric: str = "proximal-scale"


SITE_METHODS: Registry[SiteMethod] = Registry("strategy.name")


def site_method(strategy: StrategyConfig) -> SiteMethod | None:
    """The client-side pieces of the configured strategy, if it has any (every method is
    registered by then: importing this module runs ``omnirad.methods``, which imports them)."""
    return SITE_METHODS.get(strategy.name)


def check_site_method(cfg: Config) -> None:
    """The configured strategy's site-side keys, when it has site-side pieces."""
    method = site_method(cfg.strategy)
    if method is not None:
        method.check(cfg)
