"""``data.num-sites`` left at 0: the federation's size, known once the federation is.

Flower decides how many simulated SuperNodes there are (``num-supernodes``) and tells every node
(``num-partitions``) and the server (its connected nodes). A run that does not set
``data.num-sites`` takes that number, so ``flwr run .`` works whatever size Flower's federation
has; one that sets it must match (the server says so before anything starts). Everything that
splits data or counts sites needs the number: it resolves the configuration first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from omnirad.config.io import to_flat
from omnirad.config.schema import Config
from omnirad.errors import ConfigError

FEDERATION_SIZE = 0  # data.num-sites' default: the federation's size

Loader = Callable[[Mapping[str, Any]], Config]
_loaders: list[Loader] = []


def validate_with(load: Loader) -> None:
    """Called once by ``omnirad.configure``, whose ``load_config`` made every ``Config`` there is:
    it sees every registry, which this package may not import."""
    _loaders.append(load)


def with_num_sites(cfg: Config, federation_size: int) -> Config:
    """``cfg`` with ``data.num-sites`` set to ``federation_size`` when it was left to the federation,
    validated again (keys that count sites are checked against the number); unchanged otherwise."""
    if cfg.data.num_sites != FEDERATION_SIZE:
        return cfg
    if not _loaders:
        raise RuntimeError("with_num_sites validates with omnirad.configure.load_config: load the configuration with it")
    return _loaders[-1]({**to_flat(cfg), "data.num-sites": federation_size})


def require_num_sites(cfg: Config) -> int:
    """``data.num-sites``, or ``ConfigError`` while it still waits for the federation's size."""
    if cfg.data.num_sites == FEDERATION_SIZE:
        raise ConfigError("data.num-sites=0 (the federation's size) is known only inside a federation: set "
                          "data.num-sites to split the data or name sites outside one")
    return cfg.data.num_sites
