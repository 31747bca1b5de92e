"""A site's side of a secure sum (``privacy.secure-sum``, ``omnirad.secure_sum``): two messages.

``query.secure_sum_keys``: the site computes what it would add (its *contribution*, registered by
purpose with ``@secure_sum_source``), checks it, makes a fresh X25519 key pair for the session and
keeps the private key in its Flower context (on its own machine); it answers with the public key,
the contribution's block names and sizes, and a power-of-two bound per block.

``query.secure_sum_masked``: the site takes (and deletes) the session's private key, takes the
contribution the keys step computed (kept in this process; a process that restarted in between
computes it again: no randomness, or DP noise from a fixed seed, and refuses unless its SHA-256 is
the one the keys step kept), encodes it at the agreed scales, masks it with every other site of the
roster and sends only the masked words.
A second request for the same session finds no key and is refused: a site never masks the same
values twice with different rosters (the difference would reveal one pair's mask).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from omnirad.protocol import ARRAYS, METRICS, QUERY_SECURE_SUM_KEYS, QUERY_SECURE_SUM_MASKED, SECURE_SUM
from omnirad.secure_sum import (
    BLOCKS,
    EXPONENTS,
    MASKED,
    PARTICIPANTS,
    PUBLIC_KEY,
    PURPOSE,
    ROSTER,
    SIZES,
    TOKEN,
    TOKEN_BYTES,
    Scales,
    SecureSumError,
    exponent_of,
    layout_of,
    load_key,
    masked_contribution,
    new_key,
    private_bytes,
    public_bytes,
    session_salt,
)
from omnirad_fl.client.site_handlers import site_handler

KEYS_STATE = "secure-sum-keys"  # context.state: the private key of each open session, by token
DIGESTS_STATE = "secure-sum-digests"  # context.state: the SHA-256 of what the keys step announced, by session
# What the keys step computed, kept in this process for the masked step (a process that restarted
# in between computes it again; the digest proves it is the same); one session per node and purpose
# (a simulation runs several sites in one process).
PENDING: dict[str, dict[str, np.ndarray]] = {}
TOKEN_PATTERN = re.compile(rf"^[0-9a-f]{{{2 * TOKEN_BYTES}}}$")

# A contribution: (message, context, first) -> (blocks by name, float64, in order; reply metrics).
# ``first`` is True for the keys step, where a release is accounted (DP), False for the masked step.
Contribution = Callable[[Message, Context, bool], tuple[dict[str, np.ndarray], dict[str, float]]]
SECURE_SUM_SOURCES: dict[str, Contribution] = {}


def secure_sum_source(purpose: str) -> Callable[[Contribution], Contribution]:
    """Register the decorated function as what this site adds to a secure sum for ``purpose``."""

    def register(contribution: Contribution) -> Contribution:
        if purpose in SECURE_SUM_SOURCES:
            raise ValueError(f"secure sum: purpose {purpose!r} is registered twice")
        SECURE_SUM_SOURCES[purpose] = contribution
        return contribution

    return register


def session_of(msg: Message) -> tuple[str, str, ConfigRecord]:
    """The request's purpose, token and record, checked."""
    request = msg.content[SECURE_SUM]
    purpose, token = str(request[PURPOSE]), str(request[TOKEN])
    if purpose not in SECURE_SUM_SOURCES:
        raise SecureSumError(f"secure sum: nothing registered for purpose {purpose!r}")
    if not TOKEN_PATTERN.match(token):
        raise SecureSumError("secure sum: the session token is not the server's fresh random token")
    return purpose, token, request


def contribution(msg: Message, context: Context, purpose: str, first: bool
                 ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    arrays, metrics = SECURE_SUM_SOURCES[purpose](msg, context, first)
    return {name: np.asarray(values, dtype=np.float64).ravel() for name, values in arrays.items()}, metrics


def digest(arrays: dict[str, np.ndarray], participants: int) -> bytes:
    """SHA-256 of a contribution's names and float64 values, and of the number of sites it was made
    for (a share of distributed DP noise depends on it): the masked step adds what the keys step
    checked and bounded, for a roster of that size, or refuses."""
    hasher = hashlib.sha256(participants.to_bytes(8, "big"))
    for name, values in arrays.items():
        hasher.update(name.encode() + b"\x00" + np.ascontiguousarray(values, dtype="<f8").tobytes())
    return hasher.digest()


def keep(context: Context, field: str, purpose: str, token: str, value: bytes) -> None:
    """``value`` for the session in the site's context, dropping the purpose's older sessions."""
    kept = context.state.get(field)
    others = {k: v for k, v in kept.items() if not k.startswith(f"{purpose}/")} if isinstance(kept, ConfigRecord) else {}
    context.state[field] = ConfigRecord({**others, f"{purpose}/{token}": value})


def take(context: Context, field: str, purpose: str, token: str) -> bytes:
    """The session's value, removed from the site's context: each is used once."""
    kept = context.state.get(field)
    name = f"{purpose}/{token}"
    if not isinstance(kept, ConfigRecord) or name not in kept:
        raise SecureSumError("secure sum: this site holds no key for the session (a replayed or repeated request, "
                             "or a session it never joined): refused")
    context.state[field] = ConfigRecord({k: v for k, v in kept.items() if k != name})
    return bytes(kept[name])  # type: ignore[arg-type]


@site_handler("query", QUERY_SECURE_SUM_KEYS)
def secure_sum_keys(msg: Message, context: Context) -> Message:
    """Step 1: a fresh public key, the contribution's layout and bounds; the private key stays here."""
    purpose, token, request = session_of(msg)
    arrays, metrics = contribution(msg, context, purpose, True)
    key = new_key()
    keep(context, KEYS_STATE, purpose, token, private_bytes(key))
    keep(context, DIGESTS_STATE, purpose, token, digest(arrays, int(request[PARTICIPANTS])))  # type: ignore[arg-type]
    for session in [name for name in PENDING if name.startswith(f"{context.node_id}/{purpose}/")]:
        del PENDING[session]
    PENDING[f"{context.node_id}/{purpose}/{token}"] = arrays
    layout = layout_of(arrays)
    record = ConfigRecord({TOKEN: token, PUBLIC_KEY: public_bytes(key), BLOCKS: [name for name, _ in layout],
                           SIZES: [size for _, size in layout],
                           EXPONENTS: [exponent_of(values) for values in arrays.values()]})
    return Message(content=RecordDict({SECURE_SUM: record, METRICS: MetricRecord(metrics)}), reply_to=msg)


@site_handler("query", QUERY_SECURE_SUM_MASKED)
def secure_sum_masked(msg: Message, context: Context) -> Message:
    """Step 2: the contribution at the agreed scales, masked with every other site of the roster."""
    purpose, token, request = session_of(msg)
    key = load_key(take(context, KEYS_STATE, purpose, token))
    announced = take(context, DIGESTS_STATE, purpose, token)
    roster = [bytes(k) for k in request[ROSTER]]  # type: ignore[union-attr]
    layout = tuple(zip((str(b) for b in request[BLOCKS]), (int(s) for s in request[SIZES]), strict=True))  # type: ignore[union-attr]
    scales = Scales(tuple(int(e) for e in request[EXPONENTS]), len(roster))  # type: ignore[union-attr]
    pending = PENDING.pop(f"{context.node_id}/{purpose}/{token}", None)
    arrays, metrics = contribution(msg, context, purpose, False) if pending is None else (pending, {})
    if digest(arrays, len(roster)) != announced:
        raise SecureSumError("secure sum: this site's values, or the number of sites they were made for, changed "
                             "since it announced their bounds: not sent")
    masked = masked_contribution(arrays, layout, scales, key, roster, session_salt(context.run_id, purpose, token))
    content = RecordDict({ARRAYS: ArrayRecord({MASKED: Array(masked)}), SECURE_SUM: ConfigRecord({TOKEN: token}),
                          METRICS: MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)
