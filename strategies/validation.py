"""Server-side checks on every training reply before it is aggregated.

A hospital's update can be broken (a bug, a diverged run, NaN from a bad batch), stale or hostile.
Flower aggregates whatever arrives, so the strategy wrapper (``omnirad_fl.strategies.wrapper``)
screens replies first. Always: a reply that does not echo this round's token
(``round_receipt_problem``: a replayed message, an answer to an earlier round or to another run)
or that is larger than the global adapter it answers (``reply_size_problem``) is left out before
any of its arrays is read. With ``strategy.validate-updates``: a reply whose arrays have other
keys, shapes or dtypes than the global model, hold NaN or Inf, or whose update norm (distance from the global model) is beyond the bound is left out
with a logged reason; the round goes on with the rest. With fewer valid replies than the minimum
the round leaves the global model unchanged (Flower keeps the previous arrays when aggregation
returns none).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ArrayRecord, Message

from omnirad.config import StrategyConfig
from omnirad.protocol import ROUND_TOKEN, SITE_INFO

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UpdateRules:
    """``max_norm``: absolute bound on an update's L2 norm (0: none). ``max_norm_ratio``: bound as a
    multiple of the round's median update norm (0: none), which needs no tuning per model."""

    max_norm: float = 0.0
    max_norm_ratio: float = 10.0
    min_valid: int = 1
    clip: bool = False  # scale an oversized finite update to the median norm instead of leaving it out

    @classmethod
    def of(cls, s: StrategyConfig) -> UpdateRules:
        return cls(s.max_update_norm, s.max_norm_ratio, s.min_valid_updates, s.clip_updates)


# What a reply may carry beyond the adapter's own bytes: its metrics and site-info records.
REPLY_ALLOWANCE_BYTES = 1 << 20


def round_receipt_problem(reply: Message, token: str) -> str | None:
    """Why ``reply`` is not an answer to the round whose instruction carried ``token``, or None.
    Flower pairs a reply with its instruction by message id; the token also catches a site that
    answers with what it kept from an earlier round or another run (the server draws a new token
    every round, never reused across runs or resumes)."""
    info = reply.content[SITE_INFO] if SITE_INFO in reply.content else None
    echoed = info.get(ROUND_TOKEN) if info is not None else None
    if echoed != token:
        return "it does not answer this round's instruction (no or another round's token: replayed, or from another run)"
    return None


def reply_bytes(reply: Message) -> int:
    """What a reply carries: its arrays' bytes as sent, 16 bytes per metric and each config value's length."""
    total = 0
    for record in reply.content.array_records.values():
        total += sum(len(array.data) for array in record.values())
    for metrics in reply.content.metric_records.values():
        total += 16 * sum(len(v) if isinstance(v, list) else 1 for v in metrics.values())
    for config in reply.content.config_records.values():
        total += sum(len(str(v)) for v in config.values())
    return total


def reply_size_problem(reply: Message, reference: dict[str, np.ndarray]) -> str | None:
    """Why ``reply`` is too large for an answer to ``reference`` (the global adapter): a reply holds
    at most the adapter's bytes and ``REPLY_ALLOWANCE_BYTES`` of metrics. Flower's transport bounds a
    message's size only loosely (hundreds of MiB), far above any adapter's."""
    limit = sum(ref.nbytes for ref in reference.values()) + REPLY_ALLOWANCE_BYTES
    size = reply_bytes(reply)
    return f"it holds {size} bytes, more than the {limit} an answer to this adapter may" if size > limit else None


def update_norm(arrays: ArrayRecord, reference: dict[str, np.ndarray]) -> float:
    """L2 norm of (reply - global) over every tensor, in float64 so large updates do not overflow."""
    return float(np.sqrt(sum(np.sum((arrays[k].numpy().astype(np.float64) - ref) ** 2) for k, ref in reference.items())))


def structural_problem(arrays: ArrayRecord, reference: dict[str, np.ndarray]) -> str | None:
    """Why a reply's arrays cannot be averaged with the global model's, or None."""
    missing, extra = reference.keys() - arrays.keys(), arrays.keys() - reference.keys()
    if missing or extra:
        return f"unexpected keys: missing {sorted(missing)[:3]}, extra {sorted(extra)[:3]}"
    for key, ref in reference.items():
        value = arrays[key].numpy()
        if value.shape != ref.shape or value.dtype != ref.dtype:
            return f"'{key}' is {value.dtype}{list(value.shape)}, expected {ref.dtype}{list(ref.shape)}"
        if not np.isfinite(value).all():
            return f"'{key}' holds NaN or Inf"
    return None


def clip_update(reply: Message, reference: dict[str, np.ndarray], norm: float, target: float) -> None:
    """Scale the reply's update (its distance from the global model) down to ``target``: a site
    whose update is too large, say by a scaling bug, still contributes its direction and data."""
    scale = target / norm
    arrays = reply.content["arrays"]
    clipped = {k: (ref + (arrays[k].numpy().astype(np.float64) - ref) * scale).astype(ref.dtype) for k, ref in reference.items()}
    reply.content["arrays"] = ArrayRecord({k: torch.from_numpy(v) for k, v in clipped.items()})


def screen_replies(replies: list[Message], reference: dict[str, np.ndarray], rules: UpdateRules) -> tuple[list[Message], list[tuple[Message, str]]]:
    """Split replies into (valid, [(rejected, reason)]) by structure, finiteness and update norm;
    with ``rules.clip`` an oversized finite update is scaled to the round's median norm and kept."""
    sound, rejected = [], []
    for reply in replies:
        if reply.has_error():
            sound.append(reply)  # a failed reply: the strategy itself leaves it out and counts it
            continue
        problem = structural_problem(reply.content["arrays"], reference)
        if problem:
            rejected.append((reply, problem))
        else:
            sound.append(reply)
    norms = {id(r): update_norm(r.content["arrays"], reference) for r in sound if not r.has_error()}
    median = float(np.median(list(norms.values()))) if norms else 0.0
    valid = []
    for reply in sound:
        norm = norms.get(id(reply))
        problem = None
        if norm is not None and rules.max_norm and norm > rules.max_norm:
            problem = f"update norm {norm:.3g} > strategy.max-update-norm {rules.max_norm:g}"
        elif norm is not None and rules.max_norm_ratio and median > 0 and norm > rules.max_norm_ratio * median:
            problem = f"update norm {norm:.3g} > {rules.max_norm_ratio:g} x the round's median {median:.3g}"
        if problem is None:
            valid.append(reply)
        elif rules.clip and median > 0:
            target = min(median, rules.max_norm) if rules.max_norm else median
            log.warning("update from node %d clipped to norm %.3g: %s", reply.metadata.src_node_id, target, problem)
            clip_update(reply, reference, norm, target)
            valid.append(reply)
        else:
            rejected.append((reply, problem))
    return valid, rejected
