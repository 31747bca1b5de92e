"""Client-side DP-SGD (opacus) with one privacy account per site over the whole federation.

Flower's opacus example builds a new PrivacyEngine each round and reports that round's epsilon,
which understates what a site has spent. Here a site keeps its accountant's history (noise
multiplier, sampling rate and steps of every round) between rounds and reports the epsilon of
all its rounds together. Before a round it checks that the round fits the budget
(``privacy.epsilon``); a site whose budget would be exceeded does not train.

The noise multiplier is ``privacy.noise-multiplier`` or, when that is 0, the smallest one with
which every planned round (``num-server-rounds`` x ``train.local-epochs``) fits the budget.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from omnirad.config.schema import Config, PrivacyConfig
from omnirad.devices import CPU, Placement
from omnirad.tasks import TaskSpec


class PrivacyBudgetSpent(RuntimeError):
    """The next round would take the site past ``privacy.epsilon``: it must not train."""


@dataclass
class PrivacyLedger:
    """A site's accountant history, one (noise multiplier, sampling rate, steps) entry per round."""

    history: list[tuple[float, float, int]] = field(default_factory=list)

    def epsilon(self, delta: float) -> float:
        if not self.history:
            return 0.0
        accountant = RDPAccountant()
        accountant.history = list(self.history)
        return float(accountant.get_epsilon(delta))

    def to_record(self) -> dict[str, list[float] | list[int]]:
        """Flat lists, as the site's state store (``omnirad.site_state``) keeps them in JSON."""
        return {"noise": [h[0] for h in self.history], "rate": [h[1] for h in self.history],
                "steps": [h[2] for h in self.history]}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> PrivacyLedger:
        return cls(list(zip(record["noise"], record["rate"], record["steps"], strict=True)))


@dataclass(frozen=True)
class RoundPlan:
    """One round of DP-SGD at a site: Poisson sampling at ``sample_rate`` for ``steps`` steps."""

    noise_multiplier: float
    sample_rate: float
    steps: int


def statistics_noise(cfg: Config) -> float:
    """The noise multiplier of a site's closed-form statistics (``model.head-init``): one Gaussian
    release spending ``privacy.statistics-share`` of the budget, or all of it when no rounds follow."""
    p = cfg.privacy
    share = 1.0 if cfg.num_server_rounds == 0 else p.statistics_share
    return float(get_noise_multiplier(target_epsilon=share * p.epsilon, target_delta=p.delta, sample_rate=1.0,
                                      steps=1, accountant="rdp"))


def planned_releases(cfg: Config) -> list[tuple[float, float, int]]:
    """What a site's privacy account holds before round 1: the closed-form statistics, if any."""
    if not cfg.privacy.dp or cfg.model.head_init == "random":
        return []
    return [(statistics_noise(cfg), 1.0, 1)]


def round_plan(cfg: Config, num_samples: int) -> RoundPlan:
    """The round's noise, sampling rate and steps, as opacus' Poisson loader will run them
    (rate 1 / batches per epoch); the noise fits the whole run, and what was released before
    round 1, into the budget."""
    p, t = cfg.privacy, cfg.train
    batches_per_epoch = math.ceil(num_samples / t.batch_size)
    sample_rate, steps = 1.0 / batches_per_epoch, t.local_epochs * batches_per_epoch
    prior = planned_releases(cfg)
    if p.noise_multiplier:
        noise = p.noise_multiplier
    elif prior:
        noise = noise_for_budget(prior, sample_rate, steps * cfg.num_server_rounds, p.epsilon, p.delta)
    else:
        noise = get_noise_multiplier(target_epsilon=p.epsilon, target_delta=p.delta, sample_rate=sample_rate,
                                     steps=steps * cfg.num_server_rounds, accountant="rdp")
    return RoundPlan(float(noise), sample_rate, steps)


def noise_for_budget(prior: list[tuple[float, float, int]], sample_rate: float, steps: int, epsilon: float,
                     delta: float) -> float:
    """The smallest noise multiplier (within 1 %) with which ``steps`` DP-SGD steps after the
    ``prior`` releases stay within ``epsilon``. opacus' ``get_noise_multiplier`` knows no prior
    history, so this bisects on the same RDP accountant."""
    def spent(noise: float) -> float:
        return PrivacyLedger([*prior, (noise, sample_rate, steps)]).epsilon(delta)

    if PrivacyLedger(list(prior)).epsilon(delta) >= epsilon:
        raise ValueError(f"privacy.epsilon={epsilon:g} is spent before round 1 (privacy.statistics-share)")
    low, high = 0.1, 1.0
    while spent(high) > epsilon:
        low, high = high, 2 * high
    while high - low > 0.01 * high:
        middle = (low + high) / 2
        low, high = (middle, high) if spent(middle) > epsilon else (low, middle)
    return high


def check_budget(ledger: PrivacyLedger, plan: RoundPlan, privacy: PrivacyConfig) -> None:
    """Raises ``PrivacyBudgetSpent`` when this round would take the site past its budget."""
    after = PrivacyLedger([*ledger.history, (plan.noise_multiplier, plan.sample_rate, plan.steps)]).epsilon(privacy.delta)
    spent = ledger.epsilon(privacy.delta)
    tolerance = 0.01 * privacy.epsilon  # the noise search stops within 1 % of the target
    if after > privacy.epsilon + tolerance:
        raise PrivacyBudgetSpent(
            f"privacy budget spent: epsilon {spent:.3f} so far, {after:.3f} after another round, "
            f"budget privacy.epsilon={privacy.epsilon:g} (delta {privacy.delta:g}); this site trains no more"
        )


def train_private(model: nn.Module, inputs: torch.Tensor, labels: np.ndarray, task: TaskSpec, *, cfg: Config,
                  plan: RoundPlan, ledger: PrivacyLedger, seed: int, placement: Placement = CPU) -> dict[str, float]:
    """One round of DP-SGD on the model's trainable tensors; appends the round to ``ledger``.

    Per-sample gradients are clipped to ``privacy.max-grad-norm`` and noised by opacus; batches are
    drawn by Poisson sampling, as the accountant assumes. It runs on ``placement``'s device in
    float32 whatever its precision: opacus' per-sample gradients are not made for autocast.
    """
    t = cfg.train
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        engine = PrivacyEngine(accountant="rdp")
        engine.accountant.history = list(ledger.history)
        loader = DataLoader(TensorDataset(inputs, task.targets(labels)), batch_size=t.batch_size,
                            generator=torch.Generator().manual_seed(seed))
        placement.place(model)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=t.lr, weight_decay=t.weight_decay)
        private, optimizer, loader = engine.make_private(
            module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=plan.noise_multiplier,
            max_grad_norm=cfg.privacy.max_grad_norm, poisson_sampling=True,
        )
        private.train()
        losses = []
        for _ in range(t.local_epochs):
            for x, y in loader:
                if len(x) == 0:  # Poisson sampling can draw an empty batch
                    continue
                optimizer.zero_grad()
                loss = task.loss(private(placement.move(x)), placement.move(y))
                loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
                optimizer.step()
                losses.append(loss.item())
        private._close()  # remove opacus' hooks: the model goes on as a plain module
        model.eval()
        ledger.history = list(engine.accountant.history)
    return {"train_loss": float(np.mean(losses)) if losses else float("nan")}
