"""Build the configured strategy: the registered Flower class, wrapped for the run folder and
update screening, and under Flower's server-side DP wrapper when that is configured."""

from __future__ import annotations

from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, Strategy
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from omnirad.config import Config
from omnirad.protocol import SITE_ID
from omnirad_fl.strategies.registry import STRATEGIES
from omnirad_fl.strategies.validation import UpdateRules
from omnirad_fl.strategies.wrapper import OmniRadStrategy, RoundObserver

SITE_IDENTITY_KEYS = (SITE_ID,)  # per-site labels, meaningless once averaged


def aggregate_site_metrics(records: list[RecordDict], weighting_key: str) -> MetricRecord:
    """Flower's weighted average of the sites' metrics, without the keys that identify a site."""
    metrics = aggregate_metricrecords(records, weighting_key)
    for key in SITE_IDENTITY_KEYS:
        metrics.pop(key, None)
    return metrics


def build_strategy(cfg: Config, observer: RoundObserver, *, done_rounds: int = 0, num_sites: int = 0) -> Strategy:
    """The strategy named by ``strategy.name``, sampling among the connected sites once at least
    ``strategy.min-sites`` (default: all ``data.num-sites``) are there; a resumed run passes the
    rounds it has done, so that its rounds are numbered on from there. ``num_sites``: the sites
    this strategy serves when not all of them (one task group: ``strategy.min-sites`` is then
    scaled to the group's share)."""
    s = cfg.strategy
    spec = STRATEGIES[s.name]
    min_sites = s.min_sites or cfg.data.num_sites  # fewer: a round starts without the sites that are down
    if num_sites:
        min_sites = min(num_sites, -(-min_sites * num_sites // cfg.data.num_sites))
    else:
        num_sites = cfg.data.num_sites
    flower = spec.flower_class(
        fraction_train=s.fraction_train,
        fraction_evaluate=s.fraction_evaluate,
        min_train_nodes=max(1, int(min_sites * s.fraction_train)),
        min_evaluate_nodes=int(min_sites * s.fraction_evaluate),
        min_available_nodes=min_sites,
        train_metrics_aggr_fn=aggregate_site_metrics,
        evaluate_metrics_aggr_fn=aggregate_site_metrics,
        **spec.parameters(s),
    )
    strategy: Strategy = OmniRadStrategy(flower, observer, rules=UpdateRules.of(s) if s.validate_updates else None,
                                          done_rounds=done_rounds)
    p = cfg.privacy
    if p.central_noise_multiplier > 0:
        return DifferentialPrivacyServerSideFixedClipping(
            strategy, p.central_noise_multiplier, p.central_clipping_norm, max(1, int(num_sites * s.fraction_train))
        )
    return strategy
