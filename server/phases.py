"""A server run is an ordered list of phases; a feature is a phase registered in its own module.

``server/app.py:main`` builds a ``ServerRun`` from the run configuration and runs every registered
phase whose ``applies`` holds, stage by stage (``STAGES``). Federated pretraining, the federated
vocabulary, task groups, the pooled feature standardisation, the spectral bank and the closed-form
head are each one module that registers its phase here (and its site-side handlers in
``omnirad_fl.client.handlers``), so a new feature adds a module, not a branch in ``main``. What a
phase derives for later ones (the federation's size, the pretrained encoder, the vocabulary, the
initial arrays, the strategy) is a field of the ``ServerRun``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from torch import nn

from omnirad.broadcast import Broadcast
from omnirad.config import Config
from omnirad.encoders import FrozenEncoder
from omnirad.multitask import TaskGroup
from omnirad.plan import RunPlan
from omnirad_fl.server.checkpoint import Checkpoint
from omnirad_fl.server.round_end import RoundEnd
from omnirad_fl.server.run_folder import RunFolder

log = logging.getLogger(__name__)

# The order in which phases run; within a stage, the order of registration.
STAGES = (
    "federation",  # who takes part: the federation's size, or the deployed sites that joined
    "pretrain",  # the encoder itself (federated self-supervised pretraining)
    "vocabulary",  # what the run folder must name from its start (a federated caption vocabulary)
    "folder",  # the run folder: new, or the stopped run's with its checkpoint
    "model",  # the adapter (or one per task group) and the arrays round 1 would start from
    "gather",  # what every site must receive with each round (standardisation, spectral bank)
    "instructions",  # the instructions every train and evaluate message carries
    "strategy",  # the strategy and what it does after each round
    "initialise",  # a better start than the model's own initialisation (closed-form heads)
    "rounds",  # the federated rounds
    "report",  # summary entries of the features
    "finish",  # the summary
)


@dataclass
class ServerRun:
    """What the server's phases know about the run, filled in as they go."""

    grid: Grid
    given: Config  # the run configuration as checked where the ServerApp received it; never rewritten
    folder: RunFolder | None = None
    checkpoint: Checkpoint | None = None
    vocabulary: tuple[str, ...] = ()
    model: nn.Module | None = None  # None for a multi-task run: a model per task group
    groups: dict[str, TaskGroup] | None = None  # a multi-task run's task groups
    kept: frozenset[str] = frozenset()  # tensors that stay at the sites (personal layers)
    initial: dict[str, torch.Tensor] = field(default_factory=dict)  # what round 1 starts from
    broadcast: Broadcast = field(default_factory=Broadcast)
    instructions: dict[str, Any] = field(default_factory=dict)  # sent with every train and evaluate message
    strategy: Strategy | None = None
    round_end: RoundEnd | None = None
    final: dict[str, torch.Tensor] | None = None  # the rounds' result
    summary: dict[str, Any] = field(default_factory=dict)  # summary.json's entries from the phases
    encoder: FrozenEncoder | None = None  # the frozen encoder, once the run folder names its weights
    finished: bool = False  # a phase ended the run (pretraining alone)
    plan: RunPlan = field(init=False)  # the given configuration and what the phases learnt (omnirad.plan)

    def __post_init__(self) -> None:
        self.plan = RunPlan.of(self.given)

    @property
    def cfg(self) -> Config:
        """The configuration the phases' components read: the plan's view."""
        return self.plan.config

    @property
    def done_rounds(self) -> int:
        """Rounds a resumed run has behind it (0 for a new run)."""
        return self.checkpoint.server_round if self.checkpoint is not None else 0

    def need_folder(self) -> RunFolder:
        if self.folder is None:
            raise RuntimeError("a phase needs the run folder before the 'folder' stage made it")
        return self.folder

    def need_encoder(self) -> FrozenEncoder:
        if self.encoder is None:
            raise RuntimeError("a phase needs the encoder before the 'folder' stage loaded it")
        return self.encoder

    def need_strategy(self) -> Strategy:
        if self.strategy is None:
            raise RuntimeError("a phase needs the strategy before the 'strategy' stage built it")
        return self.strategy


def always(run: ServerRun) -> bool:
    return True


@dataclass(frozen=True)
class Phase:
    """One step of a server run: ``run`` changes the ``ServerRun`` when ``applies`` holds."""

    name: str
    stage: str
    run: Callable[[ServerRun], None]
    applies: Callable[[ServerRun], bool] = always


class PhaseList:
    """The registered phases, in the order they run."""

    def __init__(self) -> None:
        self._phases: list[Phase] = []

    def add(self, phase: Phase) -> Phase:
        if phase.stage not in STAGES:
            raise ValueError(f"phase {phase.name!r}: unknown stage {phase.stage!r}; one of {', '.join(STAGES)}")
        if any(p.name == phase.name for p in self._phases):
            raise ValueError(f"phase {phase.name!r} is registered twice")
        self._phases.append(phase)
        return phase

    def register(self, name: str, stage: str, applies: Callable[[ServerRun], bool] = always
                 ) -> Callable[[Callable[[ServerRun], None]], Callable[[ServerRun], None]]:
        """Decorator form of ``add`` for a phase's ``run`` function."""

        def decorate(step: Callable[[ServerRun], None]) -> Callable[[ServerRun], None]:
            self.add(Phase(name, stage, step, applies))
            return step

        return decorate

    def remove(self, name: str) -> None:
        self._phases = [p for p in self._phases if p.name != name]

    def __iter__(self) -> Iterator[Phase]:
        return iter(sorted(self._phases, key=lambda p: STAGES.index(p.stage)))  # sorted() is stable

    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self)


PHASES = PhaseList()


def run_phases(run: ServerRun, phases: PhaseList = PHASES) -> ServerRun:
    """Run every phase that applies, in order, until one ends the run."""
    for phase in phases:
        if run.finished:
            break
        if phase.applies(run):
            log.debug("phase %s (%s)", phase.name, phase.stage)
            phase.run(run)
    return run
