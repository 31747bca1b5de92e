"""A site's answers for the closed-form head (``model.head-init``): its sums, and its validation
loss at the softmax scales the server names; in the clear, or under ``privacy.secure-sum`` as its
contributions to secure sums (``client/secure_sum.py``), checked here before they are masked."""

from __future__ import annotations

import logging

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from omnirad.broadcast import Broadcast
from omnirad.closed_form import (
    HEAD_INITS,
    SECURE_SUM_SCALE,
    SECURE_SUM_STATISTICS,
    SITE_FLOAT32_CHECK,
    HeadStatistics,
    closed_form_head,
    head_inputs,
    solve_deviation,
)
from omnirad.config import Config
from omnirad.models import new_model
from omnirad.privacy import PrivacyLedger
from omnirad.protocol import (
    ARRAYS,
    CONFIG,
    EPSILON,
    LOGIT_SCALES,
    METRICS,
    NUM_EXAMPLES,
    QUERY_HEAD_STATISTICS,
    QUERY_LOGIT_SCALE,
    SECURE_SUM,
    SITE_ID,
)
from omnirad.secure_sum import ATTEMPT, PARTICIPANTS
from omnirad.site import LocalSite
from omnirad_fl.client.rounds import round_inputs, run_state, site_for
from omnirad_fl.client.secure_sum import secure_sum_source
from omnirad_fl.client.site_handlers import site_handler

log = logging.getLogger(__name__)


def site_statistics(msg: Message, context: Context, *, account: bool = True, session: ConfigRecord | None = None
                    ) -> tuple[HeadStatistics, dict[str, float], Config, LocalSite]:
    """This site's sums for the closed-form head: counts, sums and, for ridge, the Gram matrix of
    what the head's output layer reads; with DP, clipped, noised and (``account``) accounted in its
    ledger on disk before they leave. ``account=False``: the same release again (the noise comes from
    a fixed seed), recorded nowhere (a secure sum's masked step repeats its keys step's release).
    ``session``: the secure sum's request; under ``privacy.distributed-noise`` the site adds its
    share of the noise for the session's number of sites, and a restart (its attempt) draws afresh:
    the same draw at another share would let two sums' difference cancel the other sites' noise."""
    cfg, site = site_for(msg, context)
    kept = run_state(cfg.privacy, site, msg, context) if account else None
    ledger = (kept.state.ledger if kept is not None else PrivacyLedger()) if cfg.privacy.dp else None
    sharing, draw = 1, 0
    if session is not None and cfg.privacy.distributed_noise:
        sharing, draw = int(session[PARTICIPANTS]), int(session[ATTEMPT])  # type: ignore[arg-type]
    stats, metrics = site.head_statistics(Broadcast.from_config(msg.content[CONFIG]), ledger, sharing=sharing,
                                          draw=draw)
    if kept is not None and cfg.privacy.dp:  # the release is accounted on disk before it leaves
        kept.save()
    return stats, metrics, cfg, site


def wire_arrays(stats: HeadStatistics, cfg: Config, site: LocalSite, broadcast: Broadcast) -> dict[str, torch.Tensor]:
    """The sums as sent in the clear, the Gram matrix packed: float32 (the root of its scatter)
    where this site's own solve from what it would send predicts its validation images within
    ``SITE_FLOAT32_CHECK`` of its float64 solve, float64 otherwise and under DP (noised sums are
    released exactly as accounted)."""
    spec = HEAD_INITS[cfg.model.head_init]
    if cfg.privacy.dp or spec is None or not spec.with_gram:
        return stats.to_arrays()
    rounded = stats.to_arrays(float32=True)
    inputs = head_inputs(closed_form_head(new_model(cfg, broadcast)), site.val_set.inputs)
    deviation = solve_deviation(stats, rounded, lambda received: spec.solve(received, cfg.model), inputs)
    float32 = deviation <= SITE_FLOAT32_CHECK
    log.debug("site %d: head statistics in %s (float32 moves its own solve by %.2g on its validation images, "
             "allowed %.2g)", site.site_id, "float32" if float32 else "float64", deviation, SITE_FLOAT32_CHECK)
    return rounded if float32 else stats.to_arrays()


@site_handler("query", QUERY_HEAD_STATISTICS)
def head_statistics(msg: Message, context: Context) -> Message:
    """This site's sums for the closed-form head, in the clear (the server checks them by site)."""
    stats, metrics, cfg, site = site_statistics(msg, context)
    arrays = wire_arrays(stats, cfg, site, Broadcast.from_config(msg.content[CONFIG]))
    return Message(content=RecordDict({ARRAYS: ArrayRecord(arrays), METRICS: MetricRecord(metrics)}), reply_to=msg)


@secure_sum_source(SECURE_SUM_STATISTICS)
def statistics_contribution(msg: Message, context: Context, first: bool) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """The same sums as blocks of a secure sum. What the server can no longer check of one site, the
    site checks here before masking: finite values, counts that match its examples, a positive
    semi-definite Gram matrix (not under DP, whose noise makes them inexact). Its number of examples
    stays in the sum: the reply names only the site and, under DP, its epsilon after the release."""
    stats, metrics, cfg, site = site_statistics(msg, context, account=first, session=msg.content[SECURE_SUM])
    blocks = stats.to_sum_blocks()
    if not all(np.isfinite(block).all() for block in blocks.values()):
        raise ValueError("this site's head statistics hold NaN or Inf: not sent")
    if not cfg.privacy.dp:
        stats.check_consistent("this site", metrics[NUM_EXAMPLES], single_label=not site.task.multi_label)
    shown = {SITE_ID: metrics[SITE_ID], **({EPSILON: metrics[EPSILON]} if first and EPSILON in metrics else {})}
    return blocks, shown


def site_scale_losses(msg: Message, context: Context) -> tuple[torch.Tensor, dict[str, float]]:
    cfg, site = site_for(msg, context)
    scales = tuple(float(s) for s in msg.content[CONFIG][LOGIT_SCALES])
    losses = site.scale_losses(round_inputs(msg, run_state(cfg.privacy, site, msg, context), training=False), scales)
    return losses, {NUM_EXAMPLES: float(len(site.val_set.labels)), SITE_ID: float(site.site_id)}


@site_handler("query", QUERY_LOGIT_SCALE)
def logit_scale(msg: Message, context: Context) -> Message:
    """Summed validation loss of the closed-form head at each scale the server names: S numbers."""
    losses, metrics = site_scale_losses(msg, context)
    return Message(content=RecordDict({ARRAYS: ArrayRecord({"losses": losses}), METRICS: MetricRecord(metrics)}),
                   reply_to=msg)


@secure_sum_source(SECURE_SUM_SCALE)
def scale_contribution(msg: Message, context: Context, first: bool) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """The same S losses as a block of a secure sum: finite and not negative, checked here."""
    losses, metrics = site_scale_losses(msg, context)
    values = losses.double().numpy()
    if not (np.isfinite(values).all() and (values >= 0).all()):
        raise ValueError("this site's validation losses are not finite and non-negative: not sent")
    return {"losses": values}, {SITE_ID: metrics[SITE_ID]}
