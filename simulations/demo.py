"""`make demo`: the default federation on the embedded data, through `flwr run .`.

Starts a loopback SuperLink it owns (or reuses one already answering), streams the run's
per-round table, and stops what it started.
"""

from __future__ import annotations

import sys
from pathlib import Path

from simulations.flower_local import LocalSuperLink, flwr_run, write_flower_config

PROJECT = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    flwr_home = PROJECT / ".flwr"
    if not (flwr_home / "config.toml").exists():
        write_flower_config(flwr_home)
    link = LocalSuperLink(flwr_home, PROJECT)
    run_config = " ".join(argv)
    if link.healthy():
        print(f"Using the SuperLink already running on 127.0.0.1:{link.http_port}.")
        return flwr_run(PROJECT, link.env, run_config).returncode
    with link:
        return flwr_run(PROJECT, link.env, run_config).returncode


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
