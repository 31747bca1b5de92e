"""A misbehaving site, on purpose: how tests and studies check that validation and robust
aggregation hold (simulation only; ``faults.site=-1`` turns it off)."""

from __future__ import annotations

from collections import OrderedDict

import torch

from omnirad.config import FaultsConfig


def misbehave(faults: FaultsConfig, site_id: int, start: dict[str, torch.Tensor],
              trained: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What site ``site_id`` sends instead of ``trained``: global + scale x its update, or NaN."""
    if faults.site != site_id:
        return trained
    if faults.kind == "nan":
        return OrderedDict((k, torch.full_like(v, float("nan"))) for k, v in trained.items())
    return OrderedDict((k, start[k] + faults.scale * (v - start[k])) for k, v in trained.items())
