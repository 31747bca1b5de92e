"""Flower's own strategies, under the names the configuration uses."""

from __future__ import annotations

from typing import Any

from flwr.serverapp.strategy import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
)

from omnirad.config import StrategyConfig
from omnirad_fl.strategies.registry import STRATEGIES, StrategySpec


def proximal(s: StrategyConfig) -> dict[str, Any]:
    return {"proximal_mu": s.proximal_mu}


def adaptive(s: StrategyConfig) -> dict[str, Any]:
    return {"eta": s.eta, "eta_l": s.eta, "tau": s.tau}  # eta_l is unused by the server side


def adaptive_with_moments(s: StrategyConfig) -> dict[str, Any]:
    return {**adaptive(s), "beta_1": s.beta_1, "beta_2": s.beta_2}


STRATEGIES.add("fedavg", StrategySpec(FedAvg))
STRATEGIES.add("fedprox", StrategySpec(FedProx, proximal, proximal=True))
STRATEGIES.add("fedadam", StrategySpec(FedAdam, adaptive_with_moments))
STRATEGIES.add("fedyogi", StrategySpec(FedYogi, adaptive_with_moments))
STRATEGIES.add("fedadagrad", StrategySpec(FedAdagrad, adaptive))
STRATEGIES.add("fedavgm", StrategySpec(FedAvgM, lambda s: {"server_learning_rate": s.server_lr,
                                                            "server_momentum": s.server_momentum}))
STRATEGIES.add("fedmedian", StrategySpec(FedMedian))
STRATEGIES.add("fedtrimmedavg", StrategySpec(FedTrimmedAvg, lambda s: {"beta": s.trim_beta}))
STRATEGIES.add("krum", StrategySpec(Krum, lambda s: {"num_malicious_nodes": s.num_malicious}))
