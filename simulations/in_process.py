"""A whole federation in this process, without Flower's SuperLink or Ray: the server's phases
send their messages through ``InProcessGrid`` to the real ClientApp, one Flower ``Context`` per
site. For tests and studies of how phases and site handlers fit together (seconds, not minutes);
the end-to-end tests run the same apps through ``flwr run``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from flwr.app import Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from omnirad_fl.client import app as client_app
from omnirad_fl.server import app as server_app  # noqa: F401 - the ServerApp's module registers every phase
from omnirad_fl.server.phases import ServerRun, run_phases
from omnirad_fl.server.run_config import load_run_config
from omnirad_fl.simulations.flower_local import instruction

FIRST_NODE = 100  # node FIRST_NODE + i is site i


class InProcessGrid:
    """Just enough of Flower's Grid for a server run: node ids, and messages answered in site order
    by ``client_app.app``. Keeps the message types it delivered, in order. A site's node config is
    a simulation's (its partition) unless ``node_configs`` gives each site's, as ``omnirad-client``
    passes it to a deployed SuperNode (its data file, weights, state folder)."""

    def __init__(self, run_config: dict, num_sites: int,
                 node_configs: Sequence[Mapping[str, Any]] | None = None) -> None:
        if node_configs is not None and len(node_configs) != num_sites:
            raise ValueError(f"{len(node_configs)} node configs for {num_sites} sites")
        nodes = [dict(node_configs[i]) if node_configs is not None else {"partition-id": i, "num-partitions": num_sites}
                 for i in range(num_sites)]
        self.contexts = {FIRST_NODE + i: Context(run_id=1, node_id=FIRST_NODE + i, state=RecordDict(),
                                                 run_config=run_config, node_config=nodes[i])
                         for i in range(num_sites)}
        self.delivered: list[str] = []

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def send_and_receive(self, messages: list[Message], timeout: float | None = None) -> list[Message]:
        replies = []
        for msg in messages:
            node, kind = msg.metadata.dst_node_id, msg.metadata.message_type
            self.delivered.append(kind)
            TaskIdentity.node_id = node  # a reply's sender is the process's node identity
            replies.append(client_app.app(instruction(kind, msg.content, node), self.contexts[node]))
        return replies


def run_in_process(run_config: Mapping[str, Any], num_sites: int,
                   node_configs: Sequence[Mapping[str, Any]] | None = None) -> ServerRun:
    """A whole run, as ``server/app.py:main`` runs it, of ``num_sites`` sites answering in this
    process (``InProcessGrid``): ``run_config`` holds the overrides (as ``flwr run --run-config``
    takes them, parsed), the schema's defaults the rest. Returns the finished ``ServerRun`` (its
    folder: ``folder``, None when the run wrote none)."""
    flat = dict(run_config)
    return run_phases(ServerRun(InProcessGrid(flat, num_sites, node_configs), load_run_config(flat)))
