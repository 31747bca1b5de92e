"""``parse_config``: flat keys in, a ``Config`` of the schema's types out, or an error that names
the key. What the values mean is checked by ``omnirad.configure.load_config``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from omnirad.config.io import flat_defaults, nest, to_wire
from omnirad.config.schema import Config
from omnirad.errors import ConfigError


def parse_config(flat: Mapping[str, Any]) -> Config:
    """Raise ``ConfigError`` naming the first unknown key or ill-typed value."""
    nested = nest(flat, flat_defaults())
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), nested)
        cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        key = to_wire(str(getattr(err, "full_key", "") or "?"))
        raise ConfigError(f"bad value for configuration key '{key}': {err.msg}") from err
    return cfg
