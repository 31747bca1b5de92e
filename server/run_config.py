"""The run configuration as the server checks it: the library's checks, then the strategy's name,
which only the server's registry knows (``omnirad_fl.strategies``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omnirad.config import Config, load_config
from omnirad_fl.strategies import check_strategy


def load_run_config(flat: Mapping[str, Any] | None = None) -> Config:
    """``omnirad.config.load_config`` and the server-side checks; ``ConfigError`` names the key."""
    cfg = load_config(flat)
    check_strategy(cfg)
    return cfg
