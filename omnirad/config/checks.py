"""Checks of a configuration that need nothing but the schema: ranges and relations of numbers.

Values that pick an implementation (an encoder, an adapter, a data source, an SSL objective, ...)
are checked beside the registry that holds them, and ``omnirad.configure.load_config`` runs every
check in one order. Each function raises ``ConfigError`` naming the first key whose value is wrong.
"""

from __future__ import annotations

import math
import re

from omnirad.config.io import comma_list, to_flat
from omnirad.config.schema import Config, PrivacyConfig, RunConfig, TrainConfig
from omnirad.errors import require

SEED_RANGE = (0, 2**32 - 1)  # numpy's seeds; every stream derived from it (omnirad.seeds) fits torch's 64 bits
RUN_NAME = re.compile(r"^(?!.*\.\.)[A-Za-z0-9_][A-Za-z0-9._+=,-]{0,99}$")  # one folder name, inside run.output-dir


def check_finite(cfg: Config) -> None:
    """Every float key: NaN or infinity passes each range check below (or fails it with a misleading
    message) and would poison training, aggregation or a timeout, so no key accepts one."""
    for key, value in to_flat(cfg).items():
        require(not isinstance(value, float) or math.isfinite(value), key, value, "a finite number")


CROSS_SITE_CHOICES = ("auto", "on", "off")  # run.cross-site (omnirad_fl.server.cross_site)


def check_run(run: RunConfig) -> None:
    """``run.seed`` within numpy's seed range; ``run.name`` a single short folder name (it follows the
    run folder's timestamp: a ``/`` or ``..`` would put the folder elsewhere)."""
    require(SEED_RANGE[0] <= run.seed <= SEED_RANGE[1], "run.seed", run.seed,
            f"from {SEED_RANGE[0]} to {SEED_RANGE[1]}")
    require(not run.name or bool(RUN_NAME.match(run.name)), "run.name", run.name,
            "at most 100 letters, digits and . _ - + = , (not starting with . - + = or ,; no '..'), or empty")
    require(run.cross_site in CROSS_SITE_CHOICES, "run.cross-site", run.cross_site,
            " or ".join(CROSS_SITE_CHOICES))


def check_rounds(cfg: Config) -> None:
    """``num-server-rounds``: 0 only when pretraining or a closed-form head runs alone."""
    alone = cfg.ssl.rounds > 0 or cfg.model.head_init != "random"
    require(cfg.num_server_rounds >= (0 if alone else 1), "num-server-rounds", cfg.num_server_rounds,
            ">= 1 (0 only to pretrain alone, with ssl.rounds > 0, or for a closed-form head alone, model.head-init)")


def check_train(train: TrainConfig) -> None:
    require(train.local_epochs >= 1, "train.local-epochs", train.local_epochs, ">= 1")
    require(train.lr > 0, "train.lr", train.lr, "> 0")
    require(train.batch_size >= 1, "train.batch-size", train.batch_size, ">= 1")
    require(train.weight_decay >= 0, "train.weight-decay", train.weight_decay, ">= 0")


def check_strategy(cfg: Config) -> None:
    """The strategy's numbers; its name is checked by the server (``omnirad_fl.strategies``), its
    site-side pieces by their method (``omnirad.methods``)."""
    s, num_sites = cfg.strategy, cfg.data.num_sites
    require(0 < s.fraction_train <= 1, "strategy.fraction-train", s.fraction_train, "in (0, 1]")
    require(0 <= s.fraction_evaluate <= 1, "strategy.fraction-evaluate", s.fraction_evaluate, "in [0, 1]")
    for key, value in (("proximal-mu", s.proximal_mu), ("max-update-norm", s.max_update_norm),
                       ("max-norm-ratio", s.max_norm_ratio)):
        require(value >= 0, f"strategy.{key}", value, ">= 0")
    for key, value in (("eta", s.eta), ("tau", s.tau), ("server-lr", s.server_lr)):
        require(value > 0, f"strategy.{key}", value, "> 0")
    for key, value in (("beta-1", s.beta_1), ("beta-2", s.beta_2), ("server-momentum", s.server_momentum)):
        require(0 <= value < 1, f"strategy.{key}", value, "in [0, 1)")
    require(0 <= s.trim_beta < 0.5, "strategy.trim-beta", s.trim_beta, "in [0, 0.5)")
    require(0 <= s.min_sites and (not num_sites or s.min_sites <= num_sites), "strategy.min-sites", s.min_sites,
            f"from 0 (all) to data.num-sites ({num_sites or 'the federation size'})")
    require(s.round_timeout > 0, "strategy.round-timeout", s.round_timeout, "> 0 seconds")
    require(s.join_timeout >= 0, "strategy.join-timeout", s.join_timeout, ">= 0 seconds")
    require(s.num_malicious >= 0, "strategy.num-malicious", s.num_malicious, ">= 0")
    require(s.min_valid_updates >= 1, "strategy.min-valid-updates", s.min_valid_updates, ">= 1")


def check_privacy(privacy: PrivacyConfig) -> None:
    require(privacy.epsilon > 0, "privacy.epsilon", privacy.epsilon, "> 0")
    require(0 < privacy.delta < 1, "privacy.delta", privacy.delta, "in (0, 1)")
    require(privacy.max_grad_norm > 0, "privacy.max-grad-norm", privacy.max_grad_norm, "> 0")
    require(privacy.noise_multiplier >= 0, "privacy.noise-multiplier", privacy.noise_multiplier, ">= 0 (0: derived from privacy.epsilon)")
    require(privacy.central_noise_multiplier >= 0, "privacy.central-noise-multiplier", privacy.central_noise_multiplier, ">= 0 (0: off)")
    require(privacy.central_clipping_norm > 0, "privacy.central-clipping-norm", privacy.central_clipping_norm, "> 0")
    require(0 < privacy.statistics_share < 1, "privacy.statistics-share", privacy.statistics_share, "in (0, 1)")
    require(privacy.max_feature_norm > 0, "privacy.max-feature-norm", privacy.max_feature_norm, "> 0")


def valid_spacing(text: str) -> bool:
    parts = comma_list(text)
    try:
        return not parts or (len(parts) == 3 and all(float(mm) >= 0 for mm in parts))
    except ValueError:
        return False
