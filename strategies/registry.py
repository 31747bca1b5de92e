"""The server's strategies by ``strategy.name``: a Flower strategy class and how the schema's keys
reach it, plus what a strategy needs from every site before round 1.

A new strategy is one registration (``STRATEGIES.add``) of a Flower class, Flower's own or one
written in this package; one with client-side pieces also registers a ``SiteMethod`` in
``omnirad.methods`` under the same name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from omnirad.config import Config, StrategyConfig
from omnirad.errors import require
from omnirad.registry import Registry


def no_parameters(s: StrategyConfig) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class StrategySpec:
    """``flower_class``: built with Flower's sampling arguments and ``parameters(strategy keys)``.
    ``proximal``: the sites add a proximal term to their loss, which DP-SGD does not clip or noise.
    ``prepare``: asked once of every site before round 1; returns fields of the round's broadcast
    (``omnirad.broadcast.Broadcast``) that every instruction then carries."""

    flower_class: type[Strategy]
    parameters: Callable[[StrategyConfig], dict[str, Any]] = no_parameters
    proximal: bool = False
    prepare: Callable[[Grid, Config], dict[str, Any]] | None = field(default=None)


STRATEGIES: Registry[StrategySpec] = Registry("strategy.name")


def check_strategy(cfg: Config) -> None:
    """What the server knows of ``strategy.name``: that it exists, and what it asks of the sites.
    Every strategy is registered by then: importing this module runs the package's ``__init__``,
    which imports the modules that register them."""
    spec = STRATEGIES[cfg.strategy.name]
    if cfg.privacy.dp:
        plain = [name for name, other in STRATEGIES.items() if not other.proximal]
        require(not spec.proximal, "strategy.name", cfg.strategy.name,
                f"a strategy without a proximal term when privacy.dp=true ({', '.join(plain)}): "
                "its gradient is not clipped or noised")
