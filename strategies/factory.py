"""Build the configured Flower strategy: Flower's own classes, observed and (by default) validated."""

from __future__ import annotations

from typing import Any

from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    Strategy,
)
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from omnirad.config import Config, StrategyConfig
from strategies.dtypes import keeps_dtypes
from strategies.observed import RoundObserver, observed
from strategies.rounds import continues_after
from strategies.validation import UpdateRules, validated

STRATEGIES: dict[str, type[Strategy]] = {
    "fedavg": FedAvg, "fedprox": FedProx, "fedadam": FedAdam, "fedyogi": FedYogi, "fedadagrad": FedAdagrad,
    "fedavgm": FedAvgM, "fedmedian": FedMedian, "fedtrimmedavg": FedTrimmedAvg, "krum": Krum,
    "spectral": FedProx,  # the sites scale mu by their spectral distance (omnirad.spectral)
}
SITE_IDENTITY_KEYS = ("site-id",)  # per-site labels, meaningless once averaged


def aggregate_site_metrics(records: list[RecordDict], weighting_key: str) -> MetricRecord:
    """Flower's weighted average of the sites' metrics, without the keys that identify a site."""
    metrics = aggregate_metricrecords(records, weighting_key)
    for key in SITE_IDENTITY_KEYS:
        metrics.pop(key, None)
    return metrics


def strategy_parameters(s: StrategyConfig) -> dict[str, Any]:
    """The schema's keys under the names Flower's class for ``s.name`` takes."""
    adaptive = {"eta": s.eta, "eta_l": s.eta, "tau": s.tau}  # eta_l is unused by the server side
    return {
        "fedprox": {"proximal_mu": s.proximal_mu},
        "spectral": {"proximal_mu": s.proximal_mu},
        "fedadam": {**adaptive, "beta_1": s.beta_1, "beta_2": s.beta_2},
        "fedyogi": {**adaptive, "beta_1": s.beta_1, "beta_2": s.beta_2},
        "fedadagrad": adaptive,
        "fedavgm": {"server_learning_rate": s.server_lr, "server_momentum": s.server_momentum},
        "fedtrimmedavg": {"beta": s.trim_beta},
        "krum": {"num_malicious_nodes": s.num_malicious},
    }.get(s.name, {})


def build_strategy(cfg: Config, observer: RoundObserver, done_rounds: int = 0, num_sites: int = 0) -> Strategy:
    """The strategy named by ``strategy.name``, sampling among the connected sites once at least
    ``strategy.min-sites`` (default: all ``data.num-sites``) are there; a resumed run passes the
    rounds it has done, so that its rounds are numbered on from there. ``num_sites``: the sites
    this strategy serves when not all of them (one task group: ``strategy.min-sites`` is then
    scaled to the group's share)."""
    s = cfg.strategy
    min_sites = s.min_sites or cfg.data.num_sites  # fewer: a round starts without the sites that are down
    if num_sites:
        min_sites = min(num_sites, -(-min_sites * num_sites // cfg.data.num_sites))
    else:
        num_sites = cfg.data.num_sites
    cls = keeps_dtypes(STRATEGIES[s.name])
    if s.validate_updates:
        cls = validated(cls)
    cls = observed(cls)
    if done_rounds:
        cls = continues_after(cls, done_rounds)
    strategy = cls(
        fraction_train=s.fraction_train,
        fraction_evaluate=s.fraction_evaluate,
        min_train_nodes=max(1, int(min_sites * s.fraction_train)),
        min_evaluate_nodes=int(min_sites * s.fraction_evaluate),
        min_available_nodes=min_sites,
        train_metrics_aggr_fn=aggregate_site_metrics,
        evaluate_metrics_aggr_fn=aggregate_site_metrics,
        **strategy_parameters(s),
    )
    strategy.observer = observer
    if s.validate_updates:
        strategy.rules = UpdateRules(s.max_update_norm, s.max_norm_ratio, s.min_valid_updates, s.clip_updates)
    p = cfg.privacy
    if p.central_noise_multiplier > 0:
        return DifferentialPrivacyServerSideFixedClipping(
            strategy, p.central_noise_multiplier, p.central_clipping_norm, max(1, int(num_sites * s.fraction_train))
        )
    return strategy
