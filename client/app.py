"""Flower ClientApp: each simulated or real site trains and evaluates the global adapter locally.

Only adapter tensors and scalar metrics leave the site; images, features and labels stay, and so
do the local tensors of ``personalization.mode`` (kept in ``context.state``, which Flower holds on
the site for the whole run, in simulation and in deployment alike).
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.deployment import EncoderMismatch, check_encoder, check_task, site_of, with_pretrained_encoder
from omnirad.broadcast import Broadcast
from omnirad.config import Config
from omnirad.faults import crash_if_due, misbehave
from omnirad.logs import show_progress
from omnirad.multitask import DECLARATION_KEY, TaskMismatch, declaration
from omnirad.privacy import PrivacyBudgetSpent, PrivacyLedger
from omnirad.site import get_site
from omnirad.ssl import from_wire, site_round, to_wire

app = ClientApp()
show_progress()
PERSONAL = "personal-adapter"  # context.state key of the site's local tensors
LEDGER = "privacy-ledger"  # context.state key of the site's DP accountant history
BUDGET_SPENT = 1001  # error code of a reply from a site whose privacy budget is spent
WRONG_ENCODER = 1002  # error code of a reply from a site whose encoder weights differ from the server's
WRONG_TASK = 1003  # error code of a reply from a site sent another task's adapter


def personal_state(context: Context) -> dict[str, torch.Tensor] | None:
    """This site's local tensors from earlier rounds, if it has trained before."""
    record = context.state.get(PERSONAL)
    return record.to_torch_state_dict() if record is not None else None


def privacy_ledger(cfg: Config, context: Context) -> PrivacyLedger | None:
    """This site's DP accounting so far (None without ``privacy.dp``)."""
    if not cfg.privacy.dp:
        return None
    record = context.state.get(LEDGER)
    return PrivacyLedger.from_record(record) if record is not None else PrivacyLedger()


def refusal(cfg: Config, msg: Message) -> Message | None:
    """An error reply when the server's encoder weights are not this site's, or the adapter is
    another task's; else None."""
    try:
        check_encoder(cfg, msg.content["config"])
        check_task(cfg, msg.content["config"])
    except EncoderMismatch as mismatch:
        return Message(Error(code=WRONG_ENCODER, reason=str(mismatch)), reply_to=msg)
    except TaskMismatch as mismatch:
        return Message(Error(code=WRONG_TASK, reason=str(mismatch)), reply_to=msg)
    return None


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received adapter for the configured local epochs and send back its shared tensors."""
    cfg, site_id = site_of(context)
    config = msg.content["config"]
    cfg = with_pretrained_encoder(cfg, config)
    if (refused := refusal(cfg, msg)) is not None:
        return refused
    site = get_site(cfg, site_id)
    state = msg.content["arrays"].to_torch_state_dict()
    crash_if_due(cfg.faults, site.site_id, int(config["server-round"]))
    ledger = privacy_ledger(cfg, context)
    try:
        new_state, metrics = site.fit(
            state, int(config["server-round"]), float(config.get("proximal-mu", 0.0)), personal_state(context),
            Broadcast.from_config(config), ledger,
        )
    except PrivacyBudgetSpent as spent:  # the strategy counts the error reply as a failure and goes on
        return Message(Error(code=BUDGET_SPENT, reason=str(spent)), reply_to=msg)
    if ledger is not None:
        context.state[LEDGER] = ConfigRecord(ledger.to_record())
    if site.local_keys:
        context.state[PERSONAL] = ArrayRecord({k: v for k, v in new_state.items() if k in site.local_keys})
    shared = {k: v for k, v in new_state.items() if k not in site.local_keys}
    shared = misbehave(cfg.faults, site.site_id, state, shared)
    content = RecordDict({"arrays": ArrayRecord(shared), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Score the received global adapter (with this site's local tensors) on its validation split;
    after the last round also the local fine-tuning baseline when configured."""
    cfg, site_id = site_of(context)
    config = msg.content["config"]
    cfg = with_pretrained_encoder(cfg, config)
    if (refused := refusal(cfg, msg)) is not None:
        return refused
    site = get_site(cfg, site_id)
    last_round = int(config.get("server-round", 0)) == cfg.num_server_rounds
    finetune_epochs = cfg.personalization.finetune_epochs if last_round else 0
    metrics = site.evaluate(msg.content["arrays"].to_torch_state_dict(), personal_state(context), finetune_epochs,
                            Broadcast.from_config(config))
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


@app.query("spectral")
def spectral_prototypes(msg: Message, context: Context) -> Message:
    """This site's contribution to the spectral knowledge bank: a few centroids, never images."""
    site = get_site(*site_of(context))
    content = RecordDict({"arrays": ArrayRecord({"prototypes": site.spectral_prototypes()})})
    return Message(content=content, reply_to=msg)


@app.query("feature_moments")
def feature_moments(msg: Message, context: Context) -> Message:
    """Count, sum and sum of squares of this site's training features, for the pooled feature
    standardisation (``model.standardise-features``); no single image's features leave."""
    site = get_site(*site_of(context))
    content = RecordDict({"arrays": ArrayRecord(site.feature_moments().to_arrays())})
    return Message(content=content, reply_to=msg)


@app.query("task")
def declare_task(msg: Message, context: Context) -> Message:
    """What this site trains (task name, kind, label names), for the server's task groups."""
    cfg, site_id = site_of(context)
    found = declaration(cfg)
    record = ConfigRecord({"site-id": site_id, **(found.to_record() if found is not None else {})})
    return Message(content=RecordDict({DECLARATION_KEY: record}), reply_to=msg)


@app.train("ssl")
def pretrain_round(msg: Message, context: Context) -> Message:
    """One round of self-supervised pretraining on this site's unlabelled training images: the
    student goes back (float16 when ``ssl.half-precision``), with the images count and loss."""
    cfg, site_id = site_of(context)
    config, s = msg.content["config"], cfg.ssl
    site = get_site(cfg, site_id)
    teacher = msg.content["teacher"].to_torch_state_dict() if "teacher" in msg.content else {}
    student, metrics = site_round(
        s.objective, cfg.model.encoder, cfg.data.size, from_wire(msg.content["arrays"].to_torch_state_dict()),
        from_wire(teacher), site.train_set.data.images, s.local_epochs, s.lr, s.batch_size,
        int(config["server-round"]), int(config["ssl-rounds"]), cfg.run.seed * 1000 + site.site_id,
    )
    metrics = {**metrics, "num-examples": len(site.train_set.data.images)}
    content = RecordDict({"arrays": ArrayRecord(to_wire(student, s.half_precision)), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)
