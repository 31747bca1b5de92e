"""A misbehaving site, on purpose: how tests and studies check that validation, robust
aggregation and the federation's tolerance of failing sites hold (simulation only;
``faults.site=-1`` turns it off)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch

from omnirad.config.schema import Config, FaultsConfig
from omnirad.data.sources import source_of
from omnirad.errors import require
from omnirad.registry import Registry

Tensors = dict[str, torch.Tensor]
# What a faulty site sends instead of its update: (faults keys, global start, trained) -> sent.
FAULTS: Registry[Callable[[FaultsConfig, Tensors, Tensors], Tensors]] = Registry("faults.kind")
FAULTS.add("scale", lambda f, start, trained: OrderedDict((k, start[k] + f.scale * (v - start[k])) for k, v in trained.items()))
FAULTS.add("nan", lambda f, start, trained: OrderedDict((k, torch.full_like(v, float("nan"))) for k, v in trained.items()))
FAULTS.add("crash", lambda f, start, trained: trained)  # it never gets to send: crash_if_due raises first


class SiteCrash(RuntimeError):
    """Raised by the faulty site's ClientApp under ``faults.kind=crash``."""


NO_FAULTY_SITE = -1  # faults.site's default: no site misbehaves

def crash_if_due(faults: FaultsConfig, site_id: int, server_round: int) -> None:
    """Under ``faults.kind=crash`` the faulty site fails every round from ``faults.from-round`` on."""
    if faults.kind == "crash" and faults.site == site_id and server_round >= faults.from_round:
        raise SiteCrash(f"faults: site {site_id} crashes in round {server_round} (faults.kind=crash)")


def misbehave(faults: FaultsConfig, site_id: int, start: dict[str, torch.Tensor],
              trained: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What site ``site_id`` sends instead of ``trained``: global + scale x its update, or NaN."""
    if faults.site != site_id:
        return trained
    return FAULTS[faults.kind](faults, start, trained)


def check_faults(cfg: Config) -> None:
    """The ``faults`` keys: a site of the federation and a registered kind; never in deployment.
    Fault injection exists to test validation and robust aggregation on simulated sites. A run
    configuration that sets it for a deployed federation is refused by the server at start and by
    every site (which checks the run configuration it receives): a server cannot make a hospital
    send NaN or scaled updates, or fail on purpose."""
    f, num_sites = cfg.faults, cfg.data.num_sites
    require(f.site == NO_FAULTY_SITE or not source_of(cfg.data.dataset).deployed, "faults.site", f.site,
            f"{NO_FAULTY_SITE} in a deployed federation (data.dataset={cfg.data.dataset!r}): fault injection is for "
            "simulated sites only")
    require(NO_FAULTY_SITE <= f.site and (not num_sites or f.site < num_sites), "faults.site", f.site,
            f"-1 (none) or a site from 0 to {num_sites - 1 if num_sites else 'the federation size - 1'}")
    FAULTS.check(f.kind)
    require(f.from_round >= 1, "faults.from-round", f.from_round, ">= 1")
