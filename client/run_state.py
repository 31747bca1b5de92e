"""A site's state for the run a message belongs to: which folder, which file, what the server has seen.

A deployed site keeps its state where its site file says (``site-state-dir``, passed by
``omnirad-client`` in the node config); a simulated site in the run folder, on the disk it shares
with the server, ``<run folder>/site-state/site-<id>/``, as the server's instructions say. The
file is named by the run key the server sends with every message, which a resumed run keeps
(Flower gives a resumed run a new run id).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from flwr.app import ConfigRecord, Context

from omnirad.config import ConfigError
from omnirad.protocol import (
    NODE_DATA_FILE,
    NODE_STATE_DIR,
    RUN_KEY,
    SIMULATION_STATE_DIR,
    TRAINED_ROUNDS,
    TRAINED_SITES,
)
from omnirad.site_state import SiteState, SiteStateStore


@dataclass
class RunState:
    """This site's state in one run, as loaded, and where it goes back."""

    store: SiteStateStore
    run_key: str
    state: SiteState

    def save(self) -> None:
        self.store.save(self.run_key, self.state)


def state_folder(site_id: int, node: Mapping[str, object], config: ConfigRecord) -> Path:
    """The site's state folder: from its site file in deployment, in the run folder in simulation."""
    if NODE_DATA_FILE in node:
        if NODE_STATE_DIR not in node:
            raise ConfigError(f"this SuperNode was started without {NODE_STATE_DIR} in its node config; start it "
                              "with omnirad-client, which takes it from the site file")
        return Path(str(node[NODE_STATE_DIR]))
    if SIMULATION_STATE_DIR not in config:
        raise ConfigError(f"the server's instructions lack {SIMULATION_STATE_DIR}: a simulated site does not know "
                          "where to keep its state for the run")
    return Path(str(config[SIMULATION_STATE_DIR])) / f"site-{site_id}"


def load_run_state(site_id: int, config: ConfigRecord, context: Context) -> RunState:
    """This site's state for the message's run (the server's run key; Flower's run id from a
    server that names none)."""
    run_key = str(config.get(RUN_KEY, "")) or f"flower-run-{context.run_id}"
    store = SiteStateStore(state_folder(site_id, context.node_config, config))
    return RunState(store, run_key, store.load(run_key))


def rounds_seen(config: ConfigRecord, site_id: int) -> int:
    """How many rounds of this run the server has recorded this site training in."""
    sites, counts = list(config.get(TRAINED_SITES, [])), list(config.get(TRAINED_ROUNDS, []))
    return int(dict(zip(sites, counts, strict=True)).get(site_id, 0))
