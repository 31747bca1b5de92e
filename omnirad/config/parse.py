"""``load_config``: flat keys in, a validated ``Config`` out, or an error that names the key."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from omnirad.config.checks import validate
from omnirad.config.io import flat_defaults, nest, to_wire
from omnirad.config.schema import Config
from omnirad.errors import ConfigError


def load_config(flat: Mapping[str, Any] | None = None) -> Config:
    """Build a validated ``Config`` from flat dotted keys (Flower's ``run_config``).

    Raises ``ConfigError`` naming the first unknown key, ill-typed value or value out of range.
    A ClientApp loads the same run configuration for every message (omegaconf takes about 30 ms
    each time), so each distinct one is built once per process and handed out as a copy.
    """
    items = tuple(sorted((k, type(v).__name__, v) for k, v in (flat or {}).items()))  # 1, 1.0, True differ
    try:
        return copy.deepcopy(_load_config(items))
    except TypeError:  # an unhashable value: no caching, same checks
        return _build_config(flat or {})


@lru_cache(maxsize=32)
def _load_config(items: tuple[tuple[str, str, Any], ...]) -> Config:
    return _build_config({key: value for key, _, value in items})


def _build_config(flat: Mapping[str, Any]) -> Config:
    nested = nest(flat, flat_defaults())
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), nested)
        cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        key = to_wire(str(getattr(err, "full_key", "") or "?"))
        raise ConfigError(f"bad value for configuration key '{key}': {err.msg}") from err
    resolve_personalized_strategy(cfg)
    resolve_head_init(cfg)
    validate(cfg)
    return cfg


def resolve_personalized_strategy(cfg: Config) -> None:
    """``strategy.name=fedper`` (or ``fedbn``: any personalization mode) means FedAvg with that
    ``personalization.mode``; ``personalization.mode`` alone also combines with any other strategy."""
    from omnirad.personalization import NO_PERSONALIZATION, PERSONALIZATION

    name, mode = cfg.strategy.name, cfg.personalization.mode
    if name not in PERSONALIZATION or name == NO_PERSONALIZATION:
        return
    if mode not in (NO_PERSONALIZATION, name):
        raise ConfigError(f"strategy.name='{name}' contradicts personalization.mode='{mode}': set one of them")
    cfg.strategy.name, cfg.personalization.mode = "fedavg", name


def resolve_head_init(cfg: Config) -> None:
    """``model.head-init=auto``: the closed-form ridge head for the ``linear`` head, where it needs
    no other decision: it equals the pooled solution, and FedAvg fine-tuning from it stays within a
    point of pooled training on IID sites (docs/heads.md). Everywhere else the random
    initialisation: the MLP head (fine-tuning its hidden layer from the ridge solution lost most of
    the gain, measured), DP (the statistics would spend budget), site-side personal layers or
    prompts, SSL (the encoder changes), multi-task groups, standardised features."""
    from omnirad.closed_form import AUTO_INIT, RANDOM_INIT
    from omnirad.methods import site_method
    from omnirad.personalization import NO_PERSONALIZATION

    if cfg.model.head_init != AUTO_INIT:
        return
    plain = (cfg.model.adapter == "linear" and not cfg.privacy.dp
             and cfg.personalization.mode == NO_PERSONALIZATION and site_method(cfg) is None
             and cfg.ssl.rounds == 0 and not cfg.multitask.site_tasks and not cfg.model.standardise_features)
    cfg.model.head_init = "ridge" if plain else RANDOM_INIT
