"""Flower ClientApp: each simulated or real site trains and evaluates the global adapter locally.

Only adapter tensors and scalar metrics leave the site; images, features and labels stay, and so
do the local tensors of ``personalization.mode`` (kept in ``context.state``, which Flower holds on
the site for the whole run, in simulation and in deployment alike). Message keys and error codes
are in ``omnirad.protocol``.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from omnirad.broadcast import Broadcast
from omnirad.config import Config
from omnirad.faults import crash_if_due, misbehave
from omnirad.logs import show_progress
from omnirad.multitask import TaskMismatch, declaration
from omnirad.privacy import PrivacyBudgetSpent, PrivacyLedger
from omnirad.protocol import (
    ARRAYS,
    BUDGET_SPENT,
    CONFIG,
    DECLARATION,
    METRICS,
    NUM_EXAMPLES,
    PERSONAL_STATE,
    PRIVACY_LEDGER,
    PROXIMAL_MU,
    QUERY_FEATURE_MOMENTS,
    QUERY_SPECTRAL,
    QUERY_TASK,
    SERVER_ROUND,
    SITE_ID,
    SSL_ROUNDS,
    TEACHER,
    TRAIN_SSL,
    WRONG_ENCODER,
    WRONG_TASK,
)
from omnirad.seeds import ssl_site_seed
from omnirad.site import RoundInputs
from omnirad.site_cache import get_site
from omnirad.ssl import SslRound, from_wire, site_round, to_wire
from omnirad_fl.client.deployment import EncoderMismatch, check_encoder, check_task, site_of, with_pretrained_encoder

app = ClientApp()
show_progress()


def personal_state(context: Context) -> dict[str, torch.Tensor] | None:
    """This site's local tensors from earlier rounds, if it has trained before."""
    record = context.state.get(PERSONAL_STATE)
    return record.to_torch_state_dict() if record is not None else None


def privacy_ledger(cfg: Config, context: Context) -> PrivacyLedger | None:
    """This site's DP accounting so far (None without ``privacy.dp``)."""
    if not cfg.privacy.dp:
        return None
    record = context.state.get(PRIVACY_LEDGER)
    return PrivacyLedger.from_record(record) if record is not None else PrivacyLedger()


def refusal(cfg: Config, msg: Message) -> Message | None:
    """An error reply when the server's encoder weights are not this site's, or the adapter is
    another task's; else None."""
    try:
        check_encoder(cfg, msg.content[CONFIG])
        check_task(cfg, msg.content[CONFIG])
    except EncoderMismatch as mismatch:
        return Message(Error(code=WRONG_ENCODER, reason=str(mismatch)), reply_to=msg)
    except TaskMismatch as mismatch:
        return Message(Error(code=WRONG_TASK, reason=str(mismatch)), reply_to=msg)
    return None


def round_inputs(msg: Message, context: Context) -> RoundInputs:
    """The round's adapter and instructions from the server, and this site's own tensors."""
    config = msg.content[CONFIG]
    return RoundInputs(state=msg.content[ARRAYS].to_torch_state_dict(), server_round=int(config.get(SERVER_ROUND, 0)),
                       proximal_mu=float(config.get(PROXIMAL_MU, 0.0)), personal=personal_state(context),
                       broadcast=Broadcast.from_config(config))


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received adapter for the configured local epochs and send back its shared tensors."""
    cfg, site_id = site_of(context)
    cfg = with_pretrained_encoder(cfg, msg.content[CONFIG])
    if (refused := refusal(cfg, msg)) is not None:
        return refused
    site = get_site(cfg, site_id)
    inputs = round_inputs(msg, context)
    crash_if_due(cfg.faults, site.site_id, inputs.server_round)
    ledger = privacy_ledger(cfg, context)
    try:
        new_state, metrics = site.fit(inputs, ledger)
    except PrivacyBudgetSpent as spent:  # the strategy counts the error reply as a failure and goes on
        return Message(Error(code=BUDGET_SPENT, reason=str(spent)), reply_to=msg)
    if ledger is not None:
        context.state[PRIVACY_LEDGER] = ConfigRecord(ledger.to_record())
    if site.local_keys:
        context.state[PERSONAL_STATE] = ArrayRecord({k: v for k, v in new_state.items() if k in site.local_keys})
    shared = {k: v for k, v in new_state.items() if k not in site.local_keys}
    shared = misbehave(cfg.faults, site.site_id, inputs.state, shared)
    content = RecordDict({ARRAYS: ArrayRecord(shared), METRICS: MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Score the received global adapter (with this site's local tensors) on its validation split;
    after the last round also the local fine-tuning baseline when configured."""
    cfg, site_id = site_of(context)
    cfg = with_pretrained_encoder(cfg, msg.content[CONFIG])
    if (refused := refusal(cfg, msg)) is not None:
        return refused
    site = get_site(cfg, site_id)
    inputs = round_inputs(msg, context)
    last_round = inputs.server_round == cfg.num_server_rounds
    metrics = site.evaluate(inputs, cfg.personalization.finetune_epochs if last_round else 0)
    return Message(content=RecordDict({METRICS: MetricRecord(metrics)}), reply_to=msg)


@app.query(QUERY_SPECTRAL)
def spectral_prototypes(msg: Message, context: Context) -> Message:
    """This site's contribution to the spectral knowledge bank: a few centroids, never images."""
    site = get_site(*site_of(context))
    content = RecordDict({ARRAYS: ArrayRecord({"prototypes": site.spectral_prototypes()})})
    return Message(content=content, reply_to=msg)


@app.query(QUERY_FEATURE_MOMENTS)
def feature_moments(msg: Message, context: Context) -> Message:
    """Count, sum and sum of squares of this site's training features, for the pooled feature
    standardisation (``model.standardise-features``); no single image's features leave."""
    site = get_site(*site_of(context))
    content = RecordDict({ARRAYS: ArrayRecord(site.feature_moments().to_arrays())})
    return Message(content=content, reply_to=msg)


@app.query(QUERY_TASK)
def declare_task(msg: Message, context: Context) -> Message:
    """What this site trains (task name, kind, label names), for the server's task groups."""
    cfg, site_id = site_of(context)
    found = declaration(cfg)
    record = ConfigRecord({SITE_ID: site_id, **(found.to_record() if found is not None else {})})
    return Message(content=RecordDict({DECLARATION: record}), reply_to=msg)


@app.train(TRAIN_SSL)
def pretrain_round(msg: Message, context: Context) -> Message:
    """One round of self-supervised pretraining on this site's unlabelled training images: the
    student goes back (float16 when ``ssl.half-precision``), with the images count and loss."""
    cfg, site_id = site_of(context)
    config = msg.content[CONFIG]
    site = get_site(cfg, site_id)
    teacher = msg.content[TEACHER].to_torch_state_dict() if TEACHER in msg.content else {}
    task = SslRound(ssl=cfg.ssl, encoder=cfg.model.encoder, image_size=cfg.data.size,
                    student=from_wire(msg.content[ARRAYS].to_torch_state_dict()), teacher=from_wire(teacher),
                    server_round=int(config[SERVER_ROUND]), rounds=int(config[SSL_ROUNDS]),
                    seed=ssl_site_seed(cfg.run.seed, site.site_id))
    student, metrics = site_round(task, site.train_set.data.images)
    metrics = {**metrics, NUM_EXAMPLES: len(site.train_set.data.images)}
    content = RecordDict({ARRAYS: ArrayRecord(to_wire(student, cfg.ssl.half_precision)), METRICS: MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)
