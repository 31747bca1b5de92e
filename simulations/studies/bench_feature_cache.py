"""Benchmark: a site's per-round seconds with and without the on-disk feature cache.

Each round builds a fresh ``LocalSite``, as a deployed SuperNode does (a new ClientApp process per
message), then trains the head for the configured local epochs. Without the cache every round
encodes the site's images again; with it, round 1 encodes and stores, later rounds load. Both
variants run side by side in one process, on the same sites, and the ratio is printed.

    python simulations/studies/bench_feature_cache.py [--encoders vit-tiny omnirad-small] [--sizes 64 224]
        [--rounds 5] [--sites 4] [--images-per-site 40]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from omnirad.adapters import trainable_state
from omnirad.configure import load_config
from omnirad.models import new_model
from omnirad.site import LocalSite, RoundInputs


def seconds_per_round(overrides: dict, rounds: int, sites: int) -> list[float]:
    """Mean seconds per site for each round, building the site afresh every round."""
    cfg = load_config(overrides)
    state = trainable_state(new_model(cfg))
    per_round = []
    for server_round in range(1, rounds + 1):
        start = time.perf_counter()
        for site_id in range(sites):
            state, _ = LocalSite(cfg, site_id).fit(RoundInputs(state, server_round))
        per_round.append((time.perf_counter() - start) / sites)
    return per_round


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoders", nargs="+", default=["vit-tiny", "omnirad-small"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--images-per-site", type=int, default=40)
    args = parser.parse_args()
    print("| encoder | size | round 1 s/site (no cache / cache) | rounds 2+ s/site (no cache / cache) | speed-up rounds 2+ |")
    print("|---|---|---|---|---|")
    results = []
    for encoder in args.encoders:
        for size in args.sizes:
            base = {
                "model.encoder": encoder, "data.size": size, "data.num-sites": args.sites, "data.partition": "iid",
                "data.num-train": args.sites * args.images_per_site, "data.min-site-samples": 2,
                "model.adapter": "linear", "train.local-epochs": 5,
            }
            plain = seconds_per_round(base, args.rounds, args.sites)
            with tempfile.TemporaryDirectory() as cache_dir:
                cached = seconds_per_round({**base, "model.feature-cache": True, "model.cache-dir": cache_dir},
                                           args.rounds, args.sites)
            later_plain, later_cached = sum(plain[1:]) / len(plain[1:]), sum(cached[1:]) / len(cached[1:])
            row = {"encoder": encoder, "size": size, "no-cache": plain, "cache": cached,
                   "speed-up": later_plain / later_cached}
            results.append(row)
            print(f"| {encoder} | {size} | {plain[0]:.2f} / {cached[0]:.2f} | {later_plain:.3f} / {later_cached:.3f} "
                  f"| {row['speed-up']:.0f}x |", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
