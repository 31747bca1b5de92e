"""Gathering phases: what every site must receive with each round, asked of every site once
before round 1 (only summaries: no image, feature or label leaves a site)."""

from __future__ import annotations

import dataclasses
import logging

from omnirad_fl.server.phases import PHASES, ServerRun
from omnirad_fl.strategies import STRATEGIES
from omnirad_fl.strategies.site_queries import collect_standardisation

log = logging.getLogger(__name__)


@PHASES.register("strategy-prepare", "gather", applies=lambda run: STRATEGIES[run.cfg.strategy.name].prepare is not None)
def strategy_prepare(run: ServerRun) -> None:
    """What the strategy asks of every site before round 1 (the spectral bank)."""
    prepare = STRATEGIES[run.cfg.strategy.name].prepare
    assert prepare is not None  # the phase applies only then
    run.broadcast = dataclasses.replace(run.broadcast, **prepare(run.grid, run.cfg))
    if run.broadcast.bank is not None:
        run.summary["spectral-bank-rows"] = len(run.broadcast.bank)


@PHASES.register("standardisation", "gather", applies=lambda run: run.cfg.model.standardise_features)
def standardisation(run: ServerRun) -> None:
    """The pooled feature standardisation (``model.standardise-features``), written to the run
    folder: the final head needs it."""
    found, images = collect_standardisation(run.grid)
    run.need_folder().write_standardisation(found)
    log.info("Feature standardisation: mean and std of %d feature dimensions pooled over %d training images "
             "of %d sites", found.mean.numel(), images, len(run.grid.get_node_ids()))
    run.broadcast = dataclasses.replace(run.broadcast, standardisation=found)
