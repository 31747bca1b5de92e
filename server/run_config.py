"""The run configuration as the server checks it: the library's checks, then the strategy's name,
which only the server's registry knows (``omnirad_fl.strategies``), and, in deployment, the number
of sites to wait for (a simulation takes its federation's size)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omnirad.config import FEDERATION_SIZE, Config
from omnirad.configure import load_config
from omnirad.data.sources import source_of
from omnirad.errors import require
from omnirad_fl.strategies import check_strategy


def load_run_config(flat: Mapping[str, Any] | None = None) -> Config:
    """``omnirad.configure.load_config`` and the server-side checks; ``ConfigError`` names the key."""
    cfg = load_config(flat)
    check_strategy(cfg)
    if source_of(cfg.data.dataset).deployed:  # sites join over minutes: the server must know how many to wait for
        require(cfg.data.num_sites != FEDERATION_SIZE, "data.num-sites", cfg.data.num_sites,
                "the number of sites in deployment (>= 1): the server waits for them to connect")
    return cfg
