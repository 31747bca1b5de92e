"""A site's answers to the adapter rounds: train the received adapter, score it.

Only adapter tensors and scalar metrics leave the site; images, features and labels stay, and so
do the local tensors of ``personalization.mode`` and the DP ledger, kept in the site's state store
on its own disk (``omnirad.site_state``) so that they outlive a restart of the site or the server.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from omnirad.broadcast import Broadcast
from omnirad.config import Config, PrivacyConfig
from omnirad.faults import crash_if_due, misbehave
from omnirad.protocol import ARRAYS, CONFIG, METRICS, PROXIMAL_MU, ROUND_TOKEN, SERVER_ROUND, SITE_INFO
from omnirad.site import LocalSite, RoundInputs
from omnirad.site_cache import get_site
from omnirad_fl.client.deployment import (
    check_encoder,
    check_task,
    message_plan,
    site_plan,
    task_name,
    task_view,
)
from omnirad_fl.client.run_state import RunState, load_run_state, rounds_seen
from omnirad_fl.client.site_handlers import site_handler


def run_state(privacy: PrivacyConfig, site: LocalSite, msg: Message, context: Context) -> RunState | None:
    """This site's state for the message's run, from its store (None when the run keeps nothing
    at the sites: no DP, no personal tensors)."""
    if not privacy.dp and not site.local_keys:
        return None
    return load_run_state(site.site_id, msg.content[CONFIG], context)


def site_for(msg: Message, context: Context) -> tuple[Config, LocalSite]:
    """This site's configuration and data for a message about the adapter, once the message has
    passed the site's checks: the server's encoder weights are this site's, the adapter its task's."""
    plan, site_id = site_plan(context)
    cfg = task_view(message_plan(plan, msg.content[CONFIG]), site_id, context.node_config)
    check_encoder(cfg.model, msg.content[CONFIG])
    check_task(task_name(plan, site_id, context.node_config), msg.content[CONFIG])
    return cfg, get_site(cfg, site_id)


def round_inputs(msg: Message, kept: RunState | None, *, training: bool) -> RoundInputs:
    """The round's adapter and instructions from the server, and this site's own tensors: those it
    ended the previous round with when it trains, those it ended this round with when it scores."""
    config = msg.content[CONFIG]
    server_round = int(config.get(SERVER_ROUND, 0))
    personal = None
    if kept is not None:
        personal = kept.state.personal_before(server_round) if training else kept.state.personal_after(server_round)
    return RoundInputs(state=msg.content[ARRAYS].to_torch_state_dict(), server_round=server_round,
                       proximal_mu=float(config.get(PROXIMAL_MU, 0.0)), personal=personal,
                       broadcast=Broadcast.from_config(config))


@site_handler("train")
def train(msg: Message, context: Context) -> Message:
    """Train the received adapter for the configured local epochs and send back its shared tensors."""
    cfg, site = site_for(msg, context)
    kept = run_state(cfg.privacy, site, msg, context)
    if kept is not None:  # SiteStateLost: the server has seen rounds this site's store does not hold
        kept.state.check_continuity(rounds_seen(msg.content[CONFIG], site.site_id), privacy=cfg.privacy.dp)
    inputs = round_inputs(msg, kept, training=True)
    crash_if_due(cfg.faults, site.site_id, inputs.server_round)
    ledger = kept.state.ledger if kept is not None and cfg.privacy.dp else None
    new_state, metrics = site.fit(inputs, ledger)  # PrivacyBudgetSpent: an error reply; the run goes on
    if kept is not None:  # on disk before the update leaves: a released round is always accounted
        kept.state.trained(inputs.server_round,
                           {k: v for k, v in new_state.items() if k in site.local_keys} if site.local_keys else None)
        kept.save()
    shared = {k: v for k, v in new_state.items() if k not in site.local_keys}
    shared = misbehave(cfg.faults, site.site_id, inputs.state, shared)
    # where it computed, and the round's token echoed: the server takes no reply to an older round or another run
    where = ConfigRecord({"device": str(site.placement.device), "precision": site.placement.precision,
                          ROUND_TOKEN: str(msg.content[CONFIG].get(ROUND_TOKEN, ""))})
    content = RecordDict({ARRAYS: ArrayRecord(shared), METRICS: MetricRecord(metrics), SITE_INFO: where})
    return Message(content=content, reply_to=msg)


@site_handler("evaluate")
def evaluate(msg: Message, context: Context) -> Message:
    """Score the received global adapter (with this site's local tensors) on its validation split;
    after the last round also the local fine-tuning baseline when configured."""
    cfg, site = site_for(msg, context)
    inputs = round_inputs(msg, run_state(cfg.privacy, site, msg, context), training=False)
    last_round = inputs.server_round == cfg.num_server_rounds
    metrics = site.evaluate(inputs, cfg.personalization.finetune_epochs if last_round else 0)
    return Message(content=RecordDict({METRICS: MetricRecord(metrics)}), reply_to=msg)
