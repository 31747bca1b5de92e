"""A site's answers for the closed-form head (``model.head-init``): its sums, and its training
loss at the softmax scales the server names."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict

from omnirad.broadcast import Broadcast
from omnirad.protocol import (
    ARRAYS,
    CONFIG,
    LOGIT_SCALES,
    METRICS,
    NUM_EXAMPLES,
    QUERY_HEAD_STATISTICS,
    QUERY_LOGIT_SCALE,
    SITE_ID,
)
from omnirad_fl.client.rounds import round_inputs, run_state, site_for
from omnirad_fl.client.site_handlers import site_handler


@site_handler("query", QUERY_HEAD_STATISTICS)
def head_statistics(msg: Message, context: Context) -> Message:
    """This site's sums for the closed-form head: counts, sums and, for ridge, the Gram matrix of
    what the head's output layer reads; with DP, clipped, noised and accounted."""
    cfg, site = site_for(msg, context)
    kept = run_state(cfg, site, msg, context)
    ledger = kept.state.ledger if kept is not None and cfg.privacy.dp else None
    stats, metrics = site.head_statistics(Broadcast.from_config(msg.content[CONFIG]), ledger)
    if kept is not None and ledger is not None:  # the release is accounted on disk before it leaves
        kept.save()
    return Message(content=RecordDict({ARRAYS: ArrayRecord(stats.to_arrays()), METRICS: MetricRecord(metrics)}),
                   reply_to=msg)


@site_handler("query", QUERY_LOGIT_SCALE)
def logit_scale(msg: Message, context: Context) -> Message:
    """Summed validation loss of the closed-form head at each scale the server names: S numbers."""
    cfg, site = site_for(msg, context)
    scales = tuple(float(s) for s in msg.content[CONFIG][LOGIT_SCALES])
    losses = site.scale_losses(round_inputs(msg, run_state(cfg, site, msg, context), training=False), scales)
    metrics = MetricRecord({NUM_EXAMPLES: float(len(site.val_set.labels)), SITE_ID: float(site.site_id)})
    return Message(content=RecordDict({ARRAYS: ArrayRecord({"losses": losses}), METRICS: metrics}), reply_to=msg)
