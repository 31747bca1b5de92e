"""The server's side of a secure sum (``privacy.secure-sum``): relay keys, add masked words, check.

``secure_sum`` runs one sum among the given sites (``omnirad.secure_sum`` describes the protocol,
``client/secure_sum.py`` the sites' side): every site's public key and bounds, then every site's
masked vector, added modulo 2^64. The server holds no secret at any point: it sees public keys,
power-of-two bounds, masked words and the sum.

Dropouts: a site that does not answer the masked step (after the keys are fixed) would leave its
pairs' masks in the sum. The server then starts the sum again, once, without it: a new session, new
keys at every site, nothing of the first attempt reused (``MAX_RESTARTS``). A site that fails again,
or a failure of the keys step (before anything is fixed, as in every other query), ends the phase
with an error. The values of the sites that finished are then summed exactly.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ConfigRecord, RecordDict
from flwr.serverapp import Grid

from omnirad.protocol import ARRAYS, METRICS, QUERY_SECURE_SUM_KEYS, QUERY_SECURE_SUM_MASKED, SECURE_SUM
from omnirad.secure_sum import (
    ATTEMPT,
    BLOCKS,
    EXPONENTS,
    KEY_BYTES,
    MASKED,
    MIN_SITES,
    PARTICIPANTS,
    PUBLIC_KEY,
    PURPOSE,
    ROSTER,
    SIZES,
    TOKEN,
    TOKEN_BYTES,
    Layout,
    Scales,
    SecureSumError,
    unmasked_sum,
)
from omnirad_fl.strategies.site_queries import ask_sites

log = logging.getLogger(__name__)
MAX_RESTARTS = 1  # a dropout after the keys costs at most one more session (two more messages per site)


@dataclass
class SecureSum:
    """A finished secure sum: the float64 sums by block, who is in them, and what each site sent."""

    sums: dict[str, np.ndarray]
    participants: list[int]  # node ids, in order
    metrics: dict[int, dict[str, float]]  # each participant's reply metrics (its site id; under DP its epsilon)
    bytes_per_site: dict[int, int]  # what each participant sent in the session that counted
    restarts: int = 0
    dropped: list[int] = field(default_factory=list)  # node ids left out after the keys


def session_record(purpose: str, token: str, attempt: int, **fields: object) -> ConfigRecord:
    return ConfigRecord({PURPOSE: purpose, TOKEN: token, ATTEMPT: attempt, **fields})  # type: ignore[arg-type]


def with_record(content: RecordDict, record: ConfigRecord) -> RecordDict:
    return RecordDict({**dict(content.items()), SECURE_SUM: record})


def agreed_layout(phase: str, replies: dict[int, RecordDict], token: str) -> tuple[Layout, tuple[int, ...], list[bytes]]:
    """Every site's announced layout (one for all), the largest bound of each block, and the roster's
    public keys in node order. Raises ``RuntimeError`` naming the phase and the node whose step-1
    reply is malformed (names, sizes and keys are public: naming its sender reveals no value)."""
    layouts, exponents, roster = {}, [], []
    for node, content in replies.items():
        record = content.get(SECURE_SUM)
        try:
            if not isinstance(record, ConfigRecord) or str(record.get(TOKEN)) != token:
                raise SecureSumError("the reply is not for this session (replayed or stale): refused")
            key = record.get(PUBLIC_KEY)
            if not isinstance(key, bytes) or len(key) != KEY_BYTES:
                raise SecureSumError("no 32-byte X25519 public key")
            layouts[node] = tuple(zip((str(b) for b in record[BLOCKS]), (int(s) for s in record[SIZES]), strict=True))  # type: ignore[union-attr]
            exponents.append(tuple(int(e) for e in record[EXPONENTS]))  # type: ignore[union-attr]
            if len(exponents[-1]) != len(layouts[node]):
                raise SecureSumError("a bound per block expected")
            roster.append(key)
        except (SecureSumError, KeyError, TypeError, ValueError) as err:
            raise RuntimeError(f"{phase} (secure sum): node {node}: {err}") from err
    layout = next(iter(layouts.values()))
    for node, other in layouts.items():
        if other != layout:
            raise RuntimeError(f"{phase} (secure sum): node {node} announced blocks {list(other)}, others {list(layout)}")
    if len(set(roster)) != len(roster):
        raise RuntimeError(f"{phase} (secure sum): two sites sent the same public key")
    return layout, tuple(max(column) for column in zip(*exponents, strict=True)), roster


def secure_sum(grid: Grid, nodes: list[int], purpose: str, phase: str, content: RecordDict, *,
               timeout: float = 600.0, max_restarts: int = MAX_RESTARTS) -> SecureSum:
    """The sum of what ``nodes`` contribute for ``purpose`` (``content``: the phase's request, which
    both steps carry). ``phase`` names the phase in errors and logs. Raises ``RuntimeError``: a site
    missing in the keys step, fewer than ``MIN_SITES`` sites, a dropout beyond ``max_restarts``, or a
    sum that fails its checks (which names the phase, never a site: one site's part cannot be seen)."""
    participants, dropped = sorted(nodes), []
    for attempt in range(max_restarts + 1):
        if len(participants) < MIN_SITES:
            raise RuntimeError(f"{phase} (secure sum): {len(participants)} site(s) left; a secure sum needs at least "
                               f"{MIN_SITES} (the sum of one site is its values)")
        token = secrets.token_hex(TOKEN_BYTES)
        keys, failed = ask_sites(grid, participants, QUERY_SECURE_SUM_KEYS, timeout, content=with_record(
            content, session_record(purpose, token, attempt, **{PARTICIPANTS: len(participants)})))
        for node, reason in failed.items():
            raise RuntimeError(f"{phase} (secure sum): node {node} did not answer the keys step ({reason})")
        layout, exponents, roster = agreed_layout(phase, keys, token)
        request = session_record(purpose, token, attempt, **{PARTICIPANTS: len(participants), ROSTER: roster,
                                                             BLOCKS: [b for b, _ in layout],
                                                             SIZES: [s for _, s in layout],
                                                             EXPONENTS: list(exponents)})
        masked, failed = ask_sites(grid, participants, QUERY_SECURE_SUM_MASKED, timeout,
                                   content=with_record(content, request))
        if failed:
            dropped += sorted(failed)
            if attempt < max_restarts:
                log.warning("%s (secure sum): %s dropped after the keys were fixed; the sum starts again without "
                            "them (new keys, nothing reused)", phase,
                            ", ".join(f"node {n} ({why})" for n, why in sorted(failed.items())))
                participants = [node for node in participants if node not in failed]
                continue
            raise RuntimeError(f"{phase} (secure sum): {', '.join(f'node {n}' for n in sorted(failed))} dropped again "
                               f"after the keys were fixed, in the restarted sum; giving up after {max_restarts} "
                               f"restart(s)")
        vectors = []
        for node in participants:
            record, arrays = masked[node].get(SECURE_SUM), masked[node].get(ARRAYS)
            if not isinstance(record, ConfigRecord) or str(record.get(TOKEN)) != token:
                raise RuntimeError(f"{phase} (secure sum): node {node} sent a masked vector of another session "
                                   "(replayed or stale): refused")
            if arrays is None or MASKED not in arrays:
                raise RuntimeError(f"{phase} (secure sum): node {node} sent no masked vector")
            vectors.append(arrays[MASKED].numpy())
        try:
            sums = unmasked_sum(vectors, layout, Scales(exponents, len(participants)))
        except SecureSumError as err:
            raise RuntimeError(f"{phase}: the secure sum fails its checks: {err}") from err
        metrics = {node: {**dict(keys[node].get(METRICS, {}) or {}), **dict(masked[node].get(METRICS, {}) or {})}
                   for node in participants}
        sent = {node: keys[node][SECURE_SUM].count_bytes() + masked[node][ARRAYS].count_bytes()  # type: ignore[union-attr]
                for node in participants}
        return SecureSum(sums, participants, metrics, sent, attempt, dropped)  # type: ignore[arg-type]
    raise AssertionError("unreachable: the loop returns or raises")
