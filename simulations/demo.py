"""`make demo`: the default federation on the embedded data, through `flwr run .`.

Starts a loopback SuperLink it owns (or reuses one already answering), simulates as many
SuperNodes as ``data.num-sites`` asks for (4 when it is left to the federation), streams the run's
per-round table, stops what it started, and fails loudly when the run left no summary
(`flwr run` itself exits 0 even when the ServerApp fails).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click
from flwr.common.config import parse_config_args

from omnirad.config import Config, ConfigError
from omnirad.data.sites import task_info
from omnirad.plan import RunPlan
from omnirad_fl.server.run_config import load_run_config
from omnirad_fl.server.run_folder import newest_summary, shipped_scores
from omnirad_fl.simulations.flower_local import (
    DEFAULT_HTTP_PORT,
    DEFAULT_NUM_SUPERNODES,
    LocalSuperLink,
    flower_log,
    flwr_run,
    gpus_per_site,
    write_flower_config,
)

PROJECT = Path(__file__).resolve().parents[1]


def local_superlink(http_port: int = DEFAULT_HTTP_PORT, verbose: bool = False) -> LocalSuperLink:
    """The project's loopback SuperLink (not started): ``with`` it to own one for many runs;
    ``verbose`` prints Flower's and Ray's full log on the terminal (else only to a file)."""
    flwr_home = PROJECT / ".flwr"
    if not (flwr_home / "config.toml").exists():
        write_flower_config(flwr_home)
    return LocalSuperLink(flwr_home, PROJECT, http_port, verbose)


def simulation_config(flat: Mapping[str, Any]) -> Config:
    """The run configuration as the simulation these tools start will see it: ``data.num-sites``
    left to the federation is the size of the federation they start (``DEFAULT_NUM_SUPERNODES``)."""
    return RunPlan.of(load_run_config(flat)).in_federation(DEFAULT_NUM_SUPERNODES).config


def run_simulation(run_config: str, http_port: int = DEFAULT_HTTP_PORT) -> Path | None:
    """``flwr run .`` with these overrides on a loopback SuperLink; the run's summary.json, or None.

    Raises ``ConfigError`` for bad keys or values before anything starts. Flower's log of the run
    (where the SuperLink writes one) ends up in the run folder as ``flower.log``.
    """
    try:
        cfg = simulation_config(parse_config_args([run_config]) if run_config else {})
    except click.ClickException as err:
        raise ConfigError(err.message) from err
    link = local_superlink(http_port, cfg.run.verbose)
    link.flower_log.unlink(missing_ok=True)  # what a run that left no summary wrote
    started = time.time()
    gpus = gpus_per_site(cfg.data.num_sites, cfg.run.device)
    if link.healthy():
        print(f"Using the SuperLink already running on 127.0.0.1:{link.http_port}.")
        flwr_run(PROJECT, link.env, run_config, num_supernodes=cfg.data.num_sites, gpus_per_site=gpus)
    else:
        with link:
            flwr_run(PROJECT, link.env, run_config, num_supernodes=cfg.data.num_sites, gpus_per_site=gpus)
    output_dir = Path(cfg.run.output_dir)
    summary = newest_summary(output_dir if output_dir.is_absolute() else PROJECT / output_dir, started)
    if summary is not None and link.flower_log.exists():
        link.flower_log.replace(summary.parent / "flower.log")
    return summary


def main(argv: list[str]) -> int:
    run_config = " ".join(argv).strip()
    try:
        summary = run_simulation(run_config)
    except ConfigError as err:
        print(f"make demo ARGS=\"{run_config}\": {err}", file=sys.stderr)
        return 2
    if summary is None:
        print("The run did not finish: no summary.json was written. See the log above and Flower's in "
              f"{flower_log(PROJECT / '.flwr')}.", file=sys.stderr)
        return 1
    cfg = load_run_config(parse_config_args([run_config]) if run_config else {})
    shipped = shipped_scores(json.loads(summary.read_text()), task_info(cfg.data).headline_metrics)
    print(f"\nDemo finished: the run {shipped}.\nRun folder: {summary.parent}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
