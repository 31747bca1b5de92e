"""Flower ServerApp: runs the registered phases of a federated run (``omnirad_fl.server.phases``).

Importing a feature's module registers its phase; this module imports them all, in the order
their phases are listed within a stage.
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from omnirad.logs import show_progress
from omnirad_fl.server import closed_form, core_phases, cross_site, gather, multitask, pretraining, vocabulary  # noqa: F401
from omnirad_fl.server.phases import ServerRun, run_phases
from omnirad_fl.server.prompt_grid import PromptGrid
from omnirad_fl.server.run_config import load_run_config

app = ServerApp()
show_progress()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_phases(ServerRun(PromptGrid(grid), load_run_config(context.run_config)))
