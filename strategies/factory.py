"""Build the configured Flower strategy."""

from __future__ import annotations

from flwr.serverapp.strategy import FedAvg, Strategy

from omnirad.config import Config
from strategies.observed import RoundObserver, observed

STRATEGIES: dict[str, type[Strategy]] = {"fedavg": FedAvg}


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
    )
    strategy.observer = observer
    return strategy
