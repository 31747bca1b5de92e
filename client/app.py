"""Flower ClientApp: each simulated or real site trains and evaluates the global adapter locally.

Only adapter tensors and scalar metrics leave the site; images, features and labels stay.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from omnirad.config import load_config
from omnirad.faults import misbehave
from omnirad.logs import show_progress
from omnirad.site import get_site

app = ClientApp()
show_progress()


def site_id_of(context: Context) -> int:
    """The site this node plays: its partition in simulation."""
    return int(context.node_config["partition-id"])


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received adapter for the configured local epochs and send it back."""
    cfg = load_config(context.run_config)
    site = get_site(cfg, site_id_of(context))
    state = msg.content["arrays"].to_torch_state_dict()
    config = msg.content["config"]
    new_state, metrics = site.fit(state, int(config["server-round"]), float(config.get("proximal-mu", 0.0)))
    new_state = misbehave(cfg.faults, site.site_id, state, new_state)
    content = RecordDict({"arrays": ArrayRecord(new_state), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Score the received global adapter on this site's validation split."""
    cfg = load_config(context.run_config)
    site = get_site(cfg, site_id_of(context))
    metrics = site.evaluate(msg.content["arrays"].to_torch_state_dict())
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
