"""Secure sums: the server learns the sum of the sites' float64 statistics and nothing else.

The protocol is pairwise masking (Bonawitz et al., CCS 2017, without its secret sharing; a site that
drops out makes the server start the sum again without it, ``omnirad_fl.server.secure_sum``):

1. **Keys.** Each site makes a fresh X25519 key pair for this one sum (a *session*) and sends the
   public key, the names and sizes of the blocks it will add (public: shapes only) and, per block,
   a power-of-two bound on its values (``exponent_of``: the site's largest value to within a
   factor 16; this and its participation are all a site reveals beside the sum).
2. **Masks.** The server relays every public key (the *roster*) and the common bound of each block
   (the largest). Each site encodes its values in fixed point (``encode``: a power-of-two scale
   chosen from the bound and the number of sites, so that the sum of all sites cannot wrap), and
   for every other site j adds (or, by the order of the two public keys, subtracts) a stream of
   64-bit words that only it and j can compute: X25519 agreement, HKDF-SHA256 bound to the run,
   the purpose and the session, ChaCha20 as the stream. It sends only ``values + masks mod 2^64``.
3. **Sum.** The server adds the masked vectors modulo 2^64: every pair's stream enters once with
   each sign and cancels, leaving the exact sum of the encoded values, which ``decode`` turns back
   into float64 after checking it lies in the range the bounds allow.

One masked vector alone is the site's values plus at least one stream the server cannot compute,
so it is uniform on Z_2^64 whatever the values (tests/test_secure_sum.py tests this). Two extra
words that every site sets to 0 (``CHECK_WORDS``) must sum to 0: a vector masked for another
session or roster, or altered on its way, leaves them random, and the sum is refused.

Every primitive is the ``cryptography`` package's (X25519, HKDF, ChaCha20); this module writes only
the protocol around them. No Flower here: the ClientApp and the ServerApp move these values.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from omnirad.config.schema import Config
from omnirad.errors import require
from omnirad.methods import site_method

MIN_SITES = 2  # a "sum" of one site is that site's values: refused
CHECK_WORDS = 2  # words every site sets to 0; a sum whose masks do not cancel leaves them random
EXPONENT_STEP = 4  # a site's bound is rounded up to a power of 2^4: reveals its range to within x16
SMALLEST_EXPONENT = -64  # the bound of a block of zeros (any small power of two would do)
LARGEST_EXPONENT = 960  # beyond this the scale would overflow float64's exponent (values near 1e289)
SUM_BITS = 62  # the sum of every site's encoded values stays below 2^62 in magnitude, inside int64
KEY_BYTES = 32  # an X25519 public key, raw
TOKEN_BYTES = 16  # the server's random session token
MASK_INFO = b"omnirad-fl secure-sum mask v1"  # HKDF's info prefix: these keys serve nothing else

# The session record's fields (``omnirad.protocol.SECURE_SUM``, in both messages and both replies).
PURPOSE, TOKEN, ATTEMPT = "purpose", "token", "attempt"
PUBLIC_KEY, BLOCKS, SIZES, EXPONENTS, ROSTER = "public-key", "blocks", "sizes", "exponents", "roster"
PARTICIPANTS = "participants"  # how many sites the session asks: a site's share of distributed DP noise
MASKED = "masked"  # the masked reply's array

Layout = tuple[tuple[str, int], ...]  # the blocks of a contribution, in order: (name, number of values)


class SecureSumError(ValueError):
    """A site refuses to mask (a request it cannot answer safely), or a sum fails its checks."""


def layout_of(arrays: Mapping[str, np.ndarray]) -> Layout:
    """The blocks of a contribution: its arrays' names and sizes, in their order."""
    return tuple((name, int(np.asarray(values).size)) for name, values in arrays.items())


def exponent_of(values: np.ndarray) -> int:
    """The smallest multiple of ``EXPONENT_STEP`` e with every |value| < 2^e: the bound a site reports
    for a block. ``SecureSumError`` for a value that is not finite or too large for fixed point."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    if not np.isfinite(flat).all():
        raise SecureSumError("a value to sum is NaN or infinite")
    largest = float(np.abs(flat).max()) if flat.size else 0.0
    if largest == 0.0:
        return SMALLEST_EXPONENT
    exponent = math.frexp(largest)[1]  # largest < 2^exponent
    exponent = max(SMALLEST_EXPONENT, EXPONENT_STEP * math.ceil(exponent / EXPONENT_STEP))
    if exponent > LARGEST_EXPONENT:
        raise SecureSumError(f"a value to sum ({largest:.3g}) is too large for the fixed-point encoding")
    return exponent


def site_bits(num_sites: int) -> int:
    """Bits of magnitude one site's encoded values may take so that ``num_sites`` of them add up
    below 2^SUM_BITS: the headroom the number of sites needs."""
    return SUM_BITS - max(0, math.ceil(math.log2(num_sites)))


def scale_bits(exponent: int, num_sites: int) -> int:
    """k such that a value below 2^``exponent`` times 2^k stays below 2^``site_bits``: the fixed-point
    scale of a block. Values are rounded to multiples of 2^-k, which is 2^(exponent + log2 n - 62):
    below 1e-17 of the block's largest value for up to 16 sites, finer than float64's own rounding of
    a sum of that size."""
    return site_bits(num_sites) - exponent


def encode(values: np.ndarray, exponent: int, num_sites: int) -> np.ndarray:
    """``values`` in fixed point at the block's scale, as 64-bit words (two's complement). Raises
    ``SecureSumError`` when a value reaches the agreed bound 2^``exponent``: overflow is refused, never
    wrapped."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    if not np.isfinite(flat).all():
        raise SecureSumError("a value to sum is NaN or infinite")
    if flat.size and float(np.abs(flat).max()) >= math.ldexp(1.0, exponent):
        raise SecureSumError(f"a value to sum reaches the agreed bound 2^{exponent}: it would overflow")
    # |value| x 2^k < 2^site_bits <= 2^62: rint and int64 are exact, ldexp by a power of two too
    return np.rint(np.ldexp(flat, scale_bits(exponent, num_sites))).astype(np.int64).view(np.uint64)


def decode(total: np.ndarray, exponent: int, num_sites: int) -> np.ndarray:
    """The float64 sum of ``num_sites`` sites' encoded blocks, from their sum modulo 2^64. Raises
    ``SecureSumError`` when a word lies outside what ``num_sites`` values below the bound can add up
    to: a sum that wrapped, or words altered on their way."""
    signed = np.asarray(total, dtype=np.uint64).view(np.int64)
    limit = num_sites * (1 << site_bits(num_sites))
    if signed.size and (int(signed.max()) > limit or int(signed.min()) < -limit):
        raise SecureSumError("the sum leaves the range its sites' bounds allow (an overflow, or altered words)")
    return np.ldexp(signed.astype(np.float64), -scale_bits(exponent, num_sites))


def session_salt(run_id: int, purpose: str, token: str) -> bytes:
    """HKDF's salt for one session: the run, what is summed and the server's fresh token. Each site
    takes the run id from its own Flower context, so masks made for another run never cancel here."""
    return hashlib.sha256(f"{run_id}\x00{purpose}\x00{token}".encode()).digest()


def new_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def private_bytes(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())


def public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def load_key(raw: bytes) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(raw)


def mask_stream(key: X25519PrivateKey, own: bytes, peer: bytes, salt: bytes, length: int) -> np.ndarray:
    """``length`` 64-bit words only the holders of ``own``'s and ``peer``'s private keys can compute:
    their X25519 secret, expanded by HKDF-SHA256 (salted with the session, the pair's keys in the
    info) into a ChaCha20 key whose stream is the mask. A fresh key per session, so the all-zero
    nonce is never used twice with one key."""
    shared = key.exchange(X25519PublicKey.from_public_bytes(peer))
    low, high = sorted((own, peer))
    stream_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=MASK_INFO + low + high).derive(shared)
    encryptor = Cipher(algorithms.ChaCha20(stream_key, bytes(16)), mode=None).encryptor()
    return np.frombuffer(encryptor.update(bytes(8 * length)), dtype="<u8").astype(np.uint64, copy=False)


def mask(words: np.ndarray, key: X25519PrivateKey, roster: Sequence[bytes], salt: bytes) -> np.ndarray:
    """``words`` plus, for every other key in ``roster``, the pair's stream: added when this site's
    public key sorts first, subtracted otherwise, so that the pair's two streams cancel in the sum.
    numpy's uint64 arithmetic wraps: this is arithmetic modulo 2^64."""
    own = public_bytes(key)
    masked = np.array(words, dtype=np.uint64, copy=True)
    for peer in roster:
        if peer == own:
            continue
        stream = mask_stream(key, own, peer, salt, masked.size)
        if own < peer:
            masked += stream
        else:
            masked -= stream
    return masked


@dataclass(frozen=True)
class Scales:
    """The agreed fixed point of a sum: each block's bound exponent, and the number of sites."""

    exponents: tuple[int, ...]
    num_sites: int


def check_roster(roster: Sequence[bytes], own: bytes) -> None:
    """What a site checks before it masks: its own key is in the roster once, the roster's keys are
    distinct X25519 keys, and the roster has at least ``MIN_SITES`` sites (a sum of one is its values)."""
    if len(roster) < MIN_SITES:
        raise SecureSumError(f"a roster of {len(roster)} site(s): a secure sum needs at least {MIN_SITES}")
    if any(len(key) != KEY_BYTES for key in roster) or len(set(roster)) != len(roster):
        raise SecureSumError("the roster's public keys are not distinct 32-byte X25519 keys")
    if roster.count(own) != 1:
        raise SecureSumError("this site's public key is not in the roster: the request is for another session")


def masked_contribution(arrays: Mapping[str, np.ndarray], layout: Layout, scales: Scales, key: X25519PrivateKey,
                        roster: Sequence[bytes], salt: bytes) -> np.ndarray:
    """What a site sends in step 2: its blocks, checked against the layout it announced and the agreed
    bounds, encoded, followed by ``CHECK_WORDS`` zeros, and masked."""
    check_roster(roster, public_bytes(key))
    if layout_of(arrays) != layout or len(scales.exponents) != len(layout):
        raise SecureSumError("the values to sum no longer have the layout announced with the key")
    if scales.num_sites != len(roster):
        raise SecureSumError(f"scales for {scales.num_sites} sites, but a roster of {len(roster)}")
    words = [encode(values, exponent, scales.num_sites)
             for values, exponent in zip(arrays.values(), scales.exponents, strict=True)]
    words.append(np.zeros(CHECK_WORDS, dtype=np.uint64))
    return mask(np.concatenate(words), key, roster, salt)


def unmasked_sum(masked: Sequence[np.ndarray], layout: Layout, scales: Scales) -> dict[str, np.ndarray]:
    """The float64 sum of every site's blocks, by name, from their masked vectors. ``SecureSumError``
    when the vectors are not all of the layout's length, the check words do not come back 0 (masks
    that do not cancel), or a block leaves its range; the error says what failed, never whose."""
    length = sum(size for _, size in layout) + CHECK_WORDS
    if len(masked) != scales.num_sites:
        raise SecureSumError(f"{len(masked)} masked vectors for a sum of {scales.num_sites} sites")
    total = np.zeros(length, dtype=np.uint64)
    for vector in masked:
        if vector.dtype != np.uint64 or vector.shape != (length,):
            raise SecureSumError(f"a masked vector of {vector.dtype} {vector.shape}, expected uint64 ({length},)")
        total += vector
    if total[-CHECK_WORDS:].any():
        raise SecureSumError("the masks do not cancel (a vector masked for another session or roster, or words "
                             "altered on their way)")
    sums, start = {}, 0
    for (name, size), exponent in zip(layout, scales.exponents, strict=True):
        try:
            sums[name] = decode(total[start : start + size], exponent, scales.num_sites)
        except SecureSumError as err:
            raise SecureSumError(f"block '{name}': {err}") from err
        start += size
    return sums


def check_secure_sum(cfg: Config) -> None:
    """``privacy.secure-sum``: refused with what would send the server one site's values before
    round 1 anyway, or where a sum would be one site's values. A federated caption vocabulary is
    not refused: its counts are summed securely, its words sent as in the clear (``omnirad.vocabulary``)."""
    require(not cfg.privacy.distributed_noise or (cfg.privacy.secure_sum and cfg.privacy.dp
                                                  and cfg.model.head_init != "random"),
            "privacy.distributed-noise", True, "false unless privacy.secure-sum and privacy.dp are on and a closed-form "
            "head (model.head-init) is summed: only the secure sum hides each site's smaller share of the noise")
    if not cfg.privacy.secure_sum:
        return
    require(cfg.data.num_sites != 1, "privacy.secure-sum", True,
            "false with data.num-sites=1: the sum of one site is that site's values")
    require(site_method(cfg.strategy) is None, "privacy.secure-sum", True,
            f"false with strategy.name={cfg.strategy.name!r}: it gathers each site's own summaries (the spectral "
            "centroids) in the clear, which no sum can hide")
