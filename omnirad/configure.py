"""``load_config``: flat keys in, a validated ``Config`` out, or an error that names the key.

The schema (``omnirad.config``) knows types and numbers only; values that pick an implementation
are checked beside the registry holding them. This module sees every registry, so it runs every
check, in one order: the first wrong key is reported whatever else is wrong.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from omnirad.closed_form import AUTO_INIT, RANDOM_INIT
from omnirad.config.checks import check_finite, check_privacy, check_rounds, check_run, check_strategy, check_train
from omnirad.config.parse import parse_config
from omnirad.config.schema import Config
from omnirad.data.checks import check_data
from omnirad.devices import check_device_syntax
from omnirad.errors import ConfigError
from omnirad.faults import check_faults
from omnirad.methods import check_site_method, site_method
from omnirad.model_checks import check_model
from omnirad.multitask_check import check_multitask
from omnirad.personalization import NO_PERSONALIZATION, PERSONALIZATION, check_personalization
from omnirad.secure_sum import check_secure_sum
from omnirad.ssl import check_ssl
from omnirad.tracking import check_tracking


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
    cfg = parse_config(flat)
    resolve_personalized_strategy(cfg)
    resolve_head_init(cfg)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Raise ``ConfigError`` naming the first key whose value is wrong."""
    check_finite(cfg)
    check_rounds(cfg)
    check_ssl(cfg.ssl)
    check_data(cfg)
    check_model(cfg)
    check_train(cfg.train)
    check_strategy(cfg)
    check_site_method(cfg)
    check_privacy(cfg.privacy)
    check_secure_sum(cfg)
    check_personalization(cfg.personalization)
    check_faults(cfg)
    check_run(cfg.run)
    check_tracking(cfg.run)
    check_device_syntax(cfg.run.device, cfg.run.precision)
    if cfg.multitask.site_tasks:
        check_multitask(cfg)


def resolve_personalized_strategy(cfg: Config) -> None:
    """``strategy.name=fedper`` (or ``fedbn``: any personalization mode) means FedAvg with that
    ``personalization.mode``; ``personalization.mode`` alone also combines with any other strategy."""
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
    if cfg.model.head_init != AUTO_INIT:
        return
    plain = (cfg.model.adapter == "linear" and not cfg.privacy.dp
             and cfg.personalization.mode == NO_PERSONALIZATION and site_method(cfg.strategy) is None
             and cfg.ssl.rounds == 0 and not cfg.multitask.site_tasks and not cfg.model.standardise_features)
    cfg.model.head_init = "ridge" if plain else RANDOM_INIT
