"""Bytes per site of the closed-form statistics, before and after packing: the full float64 Gram
matrix (what a site sent until the packed layout), the packed float64 upper triangle, and the
packed float32 root of the site's scatter, for the linear head (192 vit-tiny features) and the MLP
head's random features (``model.hidden-dim``, 2,048 by default).

The sites answer through the real ClientApp handler in this process (``InProcessGrid``), so each
one decides its own precision with its own check (``client/closed_form.py``); bytes are measured on
the reply's ArrayRecord (``count_bytes``: the arrays as serialised, with their headers and keys).
The other two rows are the same site's sums in the other layouts, measured the same way. Also:
how far the federated solve predicts from its pooled float64 twin on every site's validation
images (``x W^T + b``), as sent and had the sites rounded their Gram matrices themselves to float32
(plain, or about their own mean: the layouts the scatter root replaced), and the phase's seconds.

    python simulations/studies/closed_form_bytes.py [--widths 192 2048] [--train 2400] [--sites 4]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord
from flwr.supercore.task_identity import TaskIdentity

from omnirad.closed_form import HEAD_INITS, HeadStatistics, closed_form_head, head_inputs, statistics_targets
from omnirad.configure import load_config
from omnirad.models import encoder_for, new_model
from omnirad.site_cache import get_site
from omnirad_fl.server import app as server_app  # noqa: F401 - registers every phase and site handler
from omnirad_fl.server.closed_form import gather_statistics
from omnirad_fl.simulations.in_process import InProcessGrid


def flat_config(width: int, num_train: int, num_sites: int) -> dict:
    head = {"model.adapter": "linear"} if width == 192 else {"model.adapter": "mlp", "model.hidden-dim": width}
    return {"data.num-train": num_train, "data.num-sites": num_sites, "data.partition": "dirichlet",
            "data.alpha": 0.1, "model.head-init": "ridge", "num-server-rounds": 0, **head}


def full_matrix_bytes(stats: HeadStatistics) -> int:
    """The reply a site sent before the packed layout: the first moments and the whole float64 matrix."""
    assert stats.gram is not None
    return ArrayRecord({**stats.first_moments(), "gram": stats.gram}).count_bytes()


def measure(width: int, num_train: int, num_sites: int) -> dict:
    flat = flat_config(width, num_train, num_sites)
    cfg = load_config(flat)
    sites = [get_site(cfg, s) for s in range(num_sites)]
    per_site = [site.head_statistics()[0] for site in sites]
    started = time.perf_counter()
    gathered = gather_statistics(InProcessGrid(flat, num_sites), cfg, new_model(cfg), ConfigRecord(),
                                 feature_width=encoder_for(cfg).num_features)
    seconds = time.perf_counter() - started
    head = closed_form_head(new_model(cfg))
    pooled = HeadStatistics.of(head_inputs(head, torch.cat([s.train_set.inputs for s in sites])),
                               statistics_targets(sites[0].task, np.concatenate([s.train_set.labels for s in sites])),
                               with_gram=True)
    inputs = head_inputs(head, torch.cat([s.val_set.inputs for s in sites])).double()

    def deviation(stats: HeadStatistics) -> float:
        """The largest |prediction - pooled float64 twin's| over every site's validation images."""
        (weight, bias), (twin_weight, twin_bias) = (HEAD_INITS["ridge"].solve(s, cfg.model) for s in (stats, pooled))
        return float(((inputs @ weight.T + bias) - (inputs @ twin_weight.T + twin_bias)).abs().max())

    def rounded(about_mean: bool) -> HeadStatistics:
        """The sites' Gram matrices themselves rounded to float32 (about each site's mean), summed."""
        total = None
        for s in per_site:
            assert s.gram is not None
            mean_part = torch.outer(s.feature_sum, s.feature_sum) / s.num_samples if about_mean else 0.0
            gram = (s.gram - mean_part).float().double() + mean_part
            one = HeadStatistics(s.num_samples, s.feature_sum, s.label_counts, s.label_sums, gram)
            total = one if total is None else total + one
        assert total is not None
        return total

    names = [f"site {s.site_id}" for s in sites]
    return {"features": width, "sites": num_sites, "training images": num_train,
            "bytes per site, full float64 Gram (before)": [full_matrix_bytes(s) for s in per_site],
            "bytes per site, packed float64": [ArrayRecord(s.to_arrays()).count_bytes() for s in per_site],
            "bytes per site, as sent (each site's choice)": [gathered.sent[n] for n in names],
            "precision per site": [gathered.precision[n] for n in names],
            "largest |prediction - pooled float64 twin|, as sent": deviation(gathered.stats),
            "... Gram matrix rounded to float32 (not sent)": deviation(rounded(about_mean=False)),
            "... Gram matrix about the site's mean rounded to float32 (not sent)": deviation(rounded(about_mean=True)),
            "phase seconds (every site in turn, then the server)": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", type=int, nargs="+", default=[192, 2048])
    parser.add_argument("--train", type=int, default=2400)
    parser.add_argument("--sites", type=int, default=4)
    args = parser.parse_args()
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 7, 1  # as in a ServerApp process
    for width in args.widths:
        print(json.dumps(measure(width, args.train, args.sites)), flush=True)


if __name__ == "__main__":
    main()
