"""A caption vocabulary from a federated word count, made before round 1 when caption site files
name no shared vocabulary file (``data.vocabulary`` empty).

Each site counts the words of its training captions with the tokenizer's own normalisation
(``omnirad.captions.word_counts``) and sends only the words it has seen at least
``data.vocabulary-min-count`` times: a word rarer than that at a site (a patient's name, a typing
error) never leaves it. The server checks every reply, sums the counts and orders the words by
summed count, most frequent first, ties by the word, so that every run on the same captions gets
the same ids; ``data.vocabulary-max-words`` cuts the list. No Flower here: the ClientApp and
the ServerApp move these records.

Under ``privacy.secure-sum`` the same vocabulary comes in two steps, and no site's counts reach the
server: each site sends only the words it would send anyway (``words_record``), the server sends
back their union, and each site adds its counts laid out on the union (``count_vector``: 0 for a
word it did not send) to a secure sum (``omnirad.secure_sum``); ``pooled_counts`` checks the total
against who sent which word. The server learns the words each site sends, as in the clear, and the
summed counts, never one site's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from omnirad.captions import SPECIAL_TOKENS, caption_words, word_counts

WORDS, COUNTS = "words", "counts"  # the reply's record: the words a site sends and their counts
COUNT_BYTES = 8  # a count on the wire (int64)
SECURE_SUM_WORD_COUNTS = "word-counts"  # privacy.secure-sum: the counts' purpose (omnirad.secure_sum)


def check_words(words: object) -> list[str]:
    """``words`` as sent: a list of distinct words of the caption tokenizer. ``ValueError`` saying
    what is wrong (the caller names who sent them)."""
    if not isinstance(words, list):
        raise ValueError(f"expected a list '{WORDS}'")
    for word in words:
        if not isinstance(word, str) or caption_words(word) != [word]:
            raise ValueError(f"{word!r} is not a word of the caption tokenizer (normalised, without spaces)")
    if len(set(words)) != len(words):
        raise ValueError("a word is sent twice")
    return words


@dataclass(frozen=True)
class SiteWordCounts:
    """What one site sends: each word it has seen at least the threshold's times, with its count."""

    counts: dict[str, int]

    @classmethod
    def of(cls, captions: Iterable[str], min_count: int) -> SiteWordCounts:
        """The counts of ``captions``' words, rarer words left out before anything is sent."""
        return cls({word: n for word, n in word_counts(captions).items() if n >= min_count})

    def to_record(self) -> dict[str, list[str] | list[int]]:
        words = sorted(self.counts)
        return {WORDS: words, COUNTS: [self.counts[word] for word in words]}

    @classmethod
    def from_record(cls, record: Mapping[str, Any], *, min_count: int) -> SiteWordCounts:
        """A site's reply, checked: ``ValueError`` saying what is wrong with it (the caller names the site)."""
        words, counts = record.get(WORDS, []), record.get(COUNTS, [])
        if not isinstance(words, list) or not isinstance(counts, list) or len(words) != len(counts):
            raise ValueError(f"expected lists '{WORDS}' and '{COUNTS}' of one length")
        check_words(words)
        for count in counts:
            if isinstance(count, bool) or not isinstance(count, int) or count < min_count:
                raise ValueError(f"count {count!r}: a site sends whole counts of at least "
                                 f"data.vocabulary-min-count={min_count}, never a rarer word")
        return cls(dict(zip(words, counts, strict=True)))

    @property
    def nbytes(self) -> int:
        """What the words and counts take on the wire (UTF-8 words, 8-byte counts)."""
        return sum(len(word.encode("utf-8")) + COUNT_BYTES for word in self.counts)

    def words_record(self) -> dict[str, list[str]]:
        """What leaves a site under ``privacy.secure-sum`` before the sum: its words, no count."""
        return {WORDS: sorted(self.counts)}

    def count_vector(self, union: object) -> np.ndarray:
        """This site's counts laid out on the server's ``union`` of every site's words (0 for a word
        it did not send, whatever its count below the threshold): its contribution to the secure sum.
        ``ValueError`` when the union is not sorted distinct words or lacks one of this site's: a site
        masks only counts the sum can carry as the plain reply would."""
        words = check_words(union)
        if words != sorted(words):
            raise ValueError("the union of words is not sorted")
        missing = set(self.counts) - set(words)
        if missing:
            raise ValueError(f"the union of words lacks {len(missing)} word(s) this site sent: not the union of the "
                             "sites' words")
        return np.array([float(self.counts.get(word, 0)) for word in words], dtype=np.float64)


def site_words(record: Mapping[str, Any]) -> frozenset[str]:
    """A site's words-only reply under ``privacy.secure-sum``, checked: ``ValueError`` for counts sent
    in the clear (the server must not receive them) or a malformed list."""
    if COUNTS in record:
        raise ValueError(f"the reply holds '{COUNTS}' in the clear; under privacy.secure-sum a site sends only its "
                         "words before the secure sum")
    return frozenset(check_words(record.get(WORDS)))


def pooled_counts(union: Sequence[str], summed: np.ndarray, sent: Iterable[frozenset[str]], *,
                  min_count: int) -> SiteWordCounts:
    """The summed counts of the words the sites in the sum sent (``sent``: each one's words), from the
    secure sum laid out on ``union``: what the plain replies would add up to. ``ValueError`` saying
    what fails: a count that is not whole, below ``min_count`` times the number of sites that sent its
    word, or not 0 for a word none of them sent (one that only a site left out of the sum sent)."""
    senders: Counter[str] = Counter(word for words in sent for word in words)
    if np.shape(summed) != (len(union),):
        raise ValueError(f"{np.size(summed)} summed counts for {len(union)} words")
    total = {}
    for word, count in zip(union, np.asarray(summed, dtype=np.float64).tolist(), strict=True):
        if count != round(count) or count < min_count * senders[word] or (not senders[word] and count):
            raise ValueError(f"the summed count of {word!r} is {count:g}; {senders[word]} site(s) in the sum sent it, "
                             f"each with a whole count of at least data.vocabulary-min-count={min_count}")
        if senders[word]:
            total[word] = int(count)
    return SiteWordCounts(total)


def federated_vocabulary(replies: Iterable[SiteWordCounts], max_words: int = 0) -> tuple[str, ...]:
    """The special tokens, then every word sent, by summed count (descending), then by the word;
    the first ``max_words`` only when it is above 0."""
    total: Counter[str] = Counter()
    for reply in replies:
        total.update(reply.counts)
    words = sorted(total, key=lambda word: (-total[word], word))
    return (*SPECIAL_TOKENS, *(words[:max_words] if max_words > 0 else words))
