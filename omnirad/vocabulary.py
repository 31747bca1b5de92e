"""A caption vocabulary from a federated word count, made before round 1 when caption site files
name no shared vocabulary file (``data.vocabulary`` empty).

Each site counts the words of its training captions with the tokenizer's own normalisation
(``omnirad.captions.word_counts``) and sends only the words it has seen at least
``data.vocabulary-min-count`` times: a word rarer than that at a site (a patient's name, a typing
error) never leaves it. The server checks every reply, sums the counts and orders the words by
summed count, most frequent first, ties by the word, so that every run on the same captions gets
the same ids; ``data.vocabulary-max-words`` cuts the list. No Flower here: the ClientApp and
the ServerApp move these records.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from omnirad.captions import SPECIAL_TOKENS, caption_words, word_counts

WORDS, COUNTS = "words", "counts"  # the reply's record: the words a site sends and their counts
COUNT_BYTES = 8  # a count on the wire (int64)


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
        for word in words:
            if not isinstance(word, str) or caption_words(word) != [word]:
                raise ValueError(f"{word!r} is not a word of the caption tokenizer (normalised, without spaces)")
        if len(set(words)) != len(words):
            raise ValueError("a word is sent twice")
        for count in counts:
            if isinstance(count, bool) or not isinstance(count, int) or count < min_count:
                raise ValueError(f"count {count!r}: a site sends whole counts of at least "
                                 f"data.vocabulary-min-count={min_count}, never a rarer word")
        return cls(dict(zip(words, counts, strict=True)))

    @property
    def nbytes(self) -> int:
        """What the words and counts take on the wire (UTF-8 words, 8-byte counts)."""
        return sum(len(word.encode("utf-8")) + COUNT_BYTES for word in self.counts)


def federated_vocabulary(replies: Iterable[SiteWordCounts], max_words: int = 0) -> tuple[str, ...]:
    """The special tokens, then every word sent, by summed count (descending), then by the word;
    the first ``max_words`` only when it is above 0."""
    total: Counter[str] = Counter()
    for reply in replies:
        total.update(reply.counts)
    words = sorted(total, key=lambda word: (-total[word], word))
    return (*SPECIAL_TOKENS, *(words[:max_words] if max_words > 0 else words))
