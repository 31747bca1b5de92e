"""Gathering phases: what every site must receive with each round, asked of every site once
before round 1 (only summaries: no image, feature or label leaves a site)."""

from __future__ import annotations

import dataclasses
import logging

from flwr.app import RecordDict
from flwr.serverapp import Grid

from omnirad.standardise import SECURE_SUM_MOMENTS, FeatureMoments, Standardisation
from omnirad_fl.server.phases import PHASES, ServerRun
from omnirad_fl.server.secure_sum import secure_sum
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
    if run.cfg.privacy.secure_sum:
        found, images = secure_standardisation(run.grid, run.cfg.strategy.round_timeout)
    else:
        found, images = collect_standardisation(run.grid)
    run.need_folder().write_standardisation(found)
    log.info("Feature standardisation: mean and std of %d feature dimensions pooled over %d training images "
             "of %d sites", found.mean.numel(), images, len(run.grid.get_node_ids()))
    run.broadcast = dataclasses.replace(run.broadcast, standardisation=found)


def secure_standardisation(grid: Grid, timeout: float = 600.0) -> tuple[Standardisation, int]:
    """``privacy.secure-sum``: the standardisation from the total of every site's moments, which
    alone the server learns; each site checked its own, the server checks the total and names the
    phase when it fails."""
    result = secure_sum(grid, sorted(grid.get_node_ids()), SECURE_SUM_MOMENTS, "feature standardisation",
                        RecordDict(), timeout=timeout)
    try:
        pooled = FeatureMoments.from_sum(result.sums, "the secure sum")
    except ValueError as err:
        raise RuntimeError(f"feature standardisation: the secure sum fails its checks: {err}") from err
    if result.dropped:
        log.warning("Feature standardisation: pooled over %d sites; %d dropped out", len(result.participants),
                    len(result.dropped))
    return Standardisation.from_moments(pooled), pooled.count
