"""Flower ClientApp: each simulated or real site trains and evaluates the global adapter locally.

Only adapter tensors and scalar metrics leave the site; images, features and labels stay, and so
do the local tensors of ``personalization.mode`` and the DP ledger, kept in the site's state store
on its own disk (``omnirad.site_state``) so that they outlive a restart of the site or the server.
Message keys and error codes are in ``omnirad.protocol``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from omnirad.broadcast import Broadcast
from omnirad.config import Config, ConfigError
from omnirad.data.npz import DataFileError
from omnirad.data.sites import training_captions
from omnirad.encoders import EncoderWeightsError
from omnirad.faults import SiteCrash, crash_if_due, misbehave
from omnirad.logs import show_progress
from omnirad.multitask import TaskMismatch, declaration
from omnirad.privacy import PrivacyBudgetSpent
from omnirad.protocol import (
    ARRAYS,
    BUDGET_SPENT,
    CONFIG,
    CONFIG_REFUSED,
    DATA_UNREADABLE,
    DECLARATION,
    LOGIT_SCALES,
    METRICS,
    NUM_EXAMPLES,
    PROXIMAL_MU,
    QUERY_FEATURE_MOMENTS,
    QUERY_HEAD_STATISTICS,
    QUERY_LOGIT_SCALE,
    QUERY_SPECTRAL,
    QUERY_TASK,
    QUERY_WORD_COUNTS,
    ROUND_TOKEN,
    SERVER_ROUND,
    SITE_FAILED,
    SITE_ID,
    SITE_INFO,
    SSL_ROUNDS,
    STATE_LOST,
    TEACHER,
    TRAIN_SSL,
    WEIGHTS_UNREADABLE,
    WORD_COUNTS,
    WRONG_ENCODER,
    WRONG_TASK,
)
from omnirad.seeds import ssl_site_seed
from omnirad.site import LocalSite, RoundInputs
from omnirad.site_cache import get_site
from omnirad.site_state import SiteStateError
from omnirad.ssl import SslRound, from_wire, site_round, to_wire
from omnirad.vocabulary import SiteWordCounts
from omnirad_fl.client.deployment import (
    EncoderMismatch,
    check_encoder,
    check_task,
    site_of,
    with_pretrained_encoder,
    with_shared_vocabulary,
)
from omnirad_fl.client.run_state import RunState, load_run_state, rounds_seen

app = ClientApp()
show_progress()
log = logging.getLogger(__name__)
# Errors whose text the project wrote and which hold no path or data: sent back as they are.
SPOKEN_ERRORS: dict[type[Exception], int] = {PrivacyBudgetSpent: BUDGET_SPENT, EncoderMismatch: WRONG_ENCODER,
                                             TaskMismatch: WRONG_TASK, SiteCrash: SITE_FAILED,
                                             SiteStateError: STATE_LOST}
# Errors whose text may name a site's files or values: a fixed message goes back, the text stays here.
SILENT_ERRORS: dict[type[Exception], tuple[int, str]] = {
    ConfigError: (CONFIG_REFUSED, "the site refused the run configuration; its log names the key"),
    DataFileError: (DATA_UNREADABLE, "the site's data could not be read; see its log"),
    EncoderWeightsError: (WEIGHTS_UNREADABLE, "the site's encoder weights did not load; see its log"),
}


def error_reply(err: Exception) -> Error:
    """What the server learns of a failure at the site: a code and a message the project wrote."""
    for kind, code in SPOKEN_ERRORS.items():
        if isinstance(err, kind):
            return Error(code=code, reason=str(err))
    for kind, (code, message) in SILENT_ERRORS.items():
        if isinstance(err, kind):
            return Error(code=code, reason=message)
    return Error(code=SITE_FAILED, reason=f"an unexpected {type(err).__name__} at the site; see its log")


def replies_safely(handler: Callable[[Message, Context], Message]) -> Callable[[Message, Context], Message]:
    """Every failure of ``handler`` becomes an error reply (``error_reply``); the whole error, with
    its traceback, is logged here at the site. Flower would otherwise send the exception's text."""
    @functools.wraps(handler)
    def guarded(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except Exception as err:  # noqa: BLE001 - each failure is answered, none leaks its text
            log.exception("%s failed", handler.__name__)
            return Message(error_reply(err), reply_to=msg)

    return guarded


def run_state(cfg: Config, site: LocalSite, msg: Message, context: Context) -> RunState | None:
    """This site's state for the message's run, from its store (None when the run keeps nothing
    at the sites: no DP, no personal tensors)."""
    if not cfg.privacy.dp and not site.local_keys:
        return None
    return load_run_state(site.site_id, msg.content[CONFIG], context)


def site_for(msg: Message, context: Context) -> tuple[Config, LocalSite]:
    """This site's configuration and data for a message about the adapter, once the message has
    passed the site's checks: the server's encoder weights are this site's, the adapter its task's."""
    cfg, site_id = site_of(context)
    cfg = with_pretrained_encoder(cfg, msg.content[CONFIG])
    cfg = with_shared_vocabulary(cfg, msg.content[CONFIG])
    check_encoder(cfg, msg.content[CONFIG])
    check_task(cfg, msg.content[CONFIG])
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


@app.train()
@replies_safely
def train(msg: Message, context: Context) -> Message:
    """Train the received adapter for the configured local epochs and send back its shared tensors."""
    cfg, site = site_for(msg, context)
    kept = run_state(cfg, site, msg, context)
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


@app.evaluate()
@replies_safely
def evaluate(msg: Message, context: Context) -> Message:
    """Score the received global adapter (with this site's local tensors) on its validation split;
    after the last round also the local fine-tuning baseline when configured."""
    cfg, site = site_for(msg, context)
    inputs = round_inputs(msg, run_state(cfg, site, msg, context), training=False)
    last_round = inputs.server_round == cfg.num_server_rounds
    metrics = site.evaluate(inputs, cfg.personalization.finetune_epochs if last_round else 0)
    return Message(content=RecordDict({METRICS: MetricRecord(metrics)}), reply_to=msg)


@app.query(QUERY_SPECTRAL)
@replies_safely
def spectral_prototypes(msg: Message, context: Context) -> Message:
    """This site's contribution to the spectral knowledge bank: a few centroids, never images."""
    site = get_site(*site_of(context))
    content = RecordDict({ARRAYS: ArrayRecord({"prototypes": site.spectral_prototypes()})})
    return Message(content=content, reply_to=msg)


@app.query(QUERY_FEATURE_MOMENTS)
@replies_safely
def feature_moments(msg: Message, context: Context) -> Message:
    """Count, sum and sum of squares of this site's training features, for the pooled feature
    standardisation (``model.standardise-features``); no single image's features leave."""
    site = get_site(*site_of(context))
    content = RecordDict({ARRAYS: ArrayRecord(site.feature_moments().to_arrays())})
    return Message(content=content, reply_to=msg)


@app.query(QUERY_HEAD_STATISTICS)
@replies_safely
def head_statistics(msg: Message, context: Context) -> Message:
    """This site's sums for the closed-form head (``model.head-init``): counts, sums and, for ridge,
    the Gram matrix of what the head's output layer reads; with DP, clipped, noised and accounted."""
    cfg, site = site_for(msg, context)
    kept = run_state(cfg, site, msg, context)
    ledger = kept.state.ledger if kept is not None and cfg.privacy.dp else None
    stats, metrics = site.head_statistics(Broadcast.from_config(msg.content[CONFIG]), ledger)
    if kept is not None and ledger is not None:  # the release is accounted on disk before it leaves
        kept.save()
    return Message(content=RecordDict({ARRAYS: ArrayRecord(stats.to_arrays()), METRICS: MetricRecord(metrics)}),
                   reply_to=msg)


@app.query(QUERY_LOGIT_SCALE)
@replies_safely
def logit_scale(msg: Message, context: Context) -> Message:
    """Summed training loss of the closed-form head at each scale the server names: S numbers."""
    cfg, site = site_for(msg, context)
    scales = tuple(float(s) for s in msg.content[CONFIG][LOGIT_SCALES])
    losses = site.scale_losses(round_inputs(msg, run_state(cfg, site, msg, context), training=False), scales)
    metrics = MetricRecord({NUM_EXAMPLES: float(len(site.train_set.labels)), SITE_ID: float(site.site_id)})
    return Message(content=RecordDict({ARRAYS: ArrayRecord({"losses": losses}), METRICS: metrics}), reply_to=msg)


@app.query(QUERY_WORD_COUNTS)
@replies_safely
def word_counts(msg: Message, context: Context) -> Message:
    """How often this site's training captions use each word, for the federated vocabulary: only
    words seen at least ``data.vocabulary-min-count`` times leave; captions and images stay."""
    cfg, site_id = site_of(context)
    counts = SiteWordCounts.of(training_captions(cfg, site_id), cfg.data.vocabulary_min_count)
    content = RecordDict({WORD_COUNTS: ConfigRecord(counts.to_record()), METRICS: MetricRecord({SITE_ID: site_id})})
    return Message(content=content, reply_to=msg)


@app.query(QUERY_TASK)
@replies_safely
def declare_task(msg: Message, context: Context) -> Message:
    """What this site trains (task name, kind, label names), for the server's task groups."""
    cfg, site_id = site_of(context)
    found = declaration(cfg)
    record = ConfigRecord({SITE_ID: site_id, **(found.to_record() if found is not None else {})})
    return Message(content=RecordDict({DECLARATION: record}), reply_to=msg)


@app.train(TRAIN_SSL)
@replies_safely
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
    student, metrics = site_round(task, site.train_set.data.images, placement=site.placement)
    metrics = {**metrics, NUM_EXAMPLES: len(site.train_set.data.images)}
    content = RecordDict({ARRAYS: ArrayRecord(to_wire(student, cfg.ssl.half_precision)), METRICS: MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)
