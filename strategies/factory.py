"""Build the configured Flower strategy."""

from __future__ import annotations

from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, Strategy
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from omnirad.config import Config
from strategies.observed import RoundObserver, observed

STRATEGIES: dict[str, type[Strategy]] = {"fedavg": FedAvg}
SITE_IDENTITY_KEYS = ("site-id",)  # per-site labels, meaningless once averaged


def aggregate_site_metrics(records: list[RecordDict], weighting_key: str) -> MetricRecord:
    """Flower's weighted average of the sites' metrics, without the keys that identify a site."""
    metrics = aggregate_metricrecords(records, weighting_key)
    for key in SITE_IDENTITY_KEYS:
        metrics.pop(key, None)
    return metrics


def build_strategy(cfg: Config, observer: RoundObserver) -> Strategy:
    """The strategy named by ``strategy.name``, sampling among ``data.num-sites`` sites."""
    num_sites = cfg.data.num_sites
    s = cfg.strategy
    strategy = observed(STRATEGIES[s.name])(
        fraction_train=s.fraction_train,
        fraction_evaluate=s.fraction_evaluate,
        min_train_nodes=max(1, int(num_sites * s.fraction_train)),
        min_evaluate_nodes=int(num_sites * s.fraction_evaluate),
        min_available_nodes=num_sites,
        train_metrics_aggr_fn=aggregate_site_metrics,
        evaluate_metrics_aggr_fn=aggregate_site_metrics,
    )
    strategy.observer = observer
    return strategy
