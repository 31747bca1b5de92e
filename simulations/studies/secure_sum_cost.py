"""What ``privacy.secure-sum`` costs the closed-form statistics phase: bytes each site sends and
seconds, with and without, for 4 and 20 simulated sites and 192 and 2,048 head inputs.

The whole federation runs in this process (``InProcessGrid``: the real ClientApp handlers, no
network), so "phase seconds" is every site's work one after the other plus the server's; in a
deployment the sites work in parallel, which "slowest site" approximates (the largest time one site
spent answering, both secure-sum steps together). 192 inputs: the linear head on vit-tiny's
features; 2,048: the MLP head's random features (``model.hidden-dim=2048``), whose Gram matrix the
closed form sums. Bytes: what each site's replies to the statistics query carry (arrays and, under
secure sums, the key step's record), measured on the messages, not computed.

    python simulations/studies/secure_sum_cost.py [--repeats 3] [--sites 4 20] [--widths 192 2048]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.supercore.task_identity import TaskIdentity

from omnirad.configure import load_config
from omnirad.models import encoder_for, new_model
from omnirad.site_cache import set_cache_limit
from omnirad_fl.server import app as server_app  # noqa: F401 - registers every phase and site handler
from omnirad_fl.server.closed_form import pooled_statistics
from omnirad_fl.simulations.in_process import InProcessGrid

STATISTICS_QUERIES = ("query.head_statistics", "query.secure_sum_keys", "query.secure_sum_masked")


class TimedGrid(InProcessGrid):
    """The in-process federation, timing each site's answers and counting the bytes of its replies."""

    def __init__(self, run_config: dict, num_sites: int) -> None:
        super().__init__(run_config, num_sites)
        self.site_seconds: dict[int, float] = {}
        self.site_bytes: dict[int, int] = {}

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for msg in messages:
            started = time.perf_counter()
            reply = super().send_and_receive([msg], timeout)[0]
            node, kind = msg.metadata.dst_node_id, msg.metadata.message_type
            self.site_seconds[node] = self.site_seconds.get(node, 0.0) + time.perf_counter() - started
            if kind in STATISTICS_QUERIES and not reply.has_error():
                sent = sum(record.count_bytes() for record in reply.content.values()
                           if isinstance(record, ArrayRecord | ConfigRecord | MetricRecord))
                self.site_bytes[node] = self.site_bytes.get(node, 0) + sent
            replies.append(reply)
        return replies


def flat_config(num_sites: int, width: int, secure: bool) -> dict:
    head = {"model.adapter": "linear"} if width == 192 else {"model.adapter": "mlp", "model.hidden-dim": width}
    return {"data.num-train": 40 * num_sites, "data.num-test": 40, "data.size": 32, "data.num-sites": num_sites,
            "data.partition": "iid", "model.head-init": "ridge", "num-server-rounds": 0, **head,
            "privacy.secure-sum": secure}


def measure(num_sites: int, width: int, secure: bool, repeats: int) -> dict:
    flat = flat_config(num_sites, width, secure)
    cfg = load_config(flat)
    feature_width = encoder_for(cfg).num_features
    rows = []
    for repeat in range(repeats + 1):  # the first, untimed, encodes every site's images: the phase is timed
        grid = TimedGrid(flat, num_sites)
        started = time.perf_counter()
        stats, _, _ = pooled_statistics(grid, cfg, new_model(cfg), ConfigRecord(), feature_width=feature_width)
        seconds = time.perf_counter() - started
        assert stats.feature_sum.numel() == width, (stats.feature_sum.numel(), width)
        if repeat == 0:
            continue
        rows.append((seconds, max(grid.site_seconds.values()), seconds - sum(grid.site_seconds.values()),
                     statistics.mean(grid.site_bytes.values())))
    phase, slowest, server, sent = (statistics.median(column) for column in zip(*rows, strict=True))
    return {"sites": num_sites, "features": width, "secure-sum": secure, "bytes-per-site": round(sent),
            "phase-seconds": round(phase, 3), "slowest-site-seconds": round(slowest, 3),
            "server-seconds": round(server, 3), "repeats": repeats}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sites", type=int, nargs="+", default=[4, 20])
    parser.add_argument("--widths", type=int, nargs="+", default=[192, 2048])
    args = parser.parse_args(argv)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 7, 1  # as in a ServerApp process
    set_cache_limit(8 * 2**30)  # every site of both configurations stays encoded
    results = []
    for num_sites in args.sites:
        for width in args.widths:
            for secure in (False, True):
                results.append(measure(num_sites, width, secure, args.repeats))
                print(json.dumps(results[-1]), flush=True)
    print("\n| sites | features | secure sum | bytes per site | phase seconds (all sites in turn) "
          "| slowest site, seconds | server, seconds |\n|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['sites']} | {r['features']:,} | {'yes' if r['secure-sum'] else 'no'} | {r['bytes-per-site']:,} "
              f"| {r['phase-seconds']:.2f} | {r['slowest-site-seconds']:.2f} | {r['server-seconds']:.2f} |")


if __name__ == "__main__":
    main()
