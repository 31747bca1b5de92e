"""A site's answers for the federated caption vocabulary: its words and counts in the clear, or
under ``privacy.secure-sum`` its words, then its counts as a contribution to a secure sum
(``client/secure_sum.py``) laid out on the union of every site's words that the server sends."""

from __future__ import annotations

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from omnirad.config import Config
from omnirad.data.sites import training_captions
from omnirad.protocol import METRICS, QUERY_WORD_COUNTS, SITE_ID, WORD_COUNTS
from omnirad.vocabulary import COUNTS, SECURE_SUM_WORD_COUNTS, WORDS, SiteWordCounts
from omnirad_fl.client.deployment import site_of
from omnirad_fl.client.secure_sum import secure_sum_source
from omnirad_fl.client.site_handlers import site_handler


def site_counts(context: Context) -> tuple[SiteWordCounts, Config, int]:
    """How often this site's training captions use each word, rarer words than
    ``data.vocabulary-min-count`` left out before anything is sent."""
    cfg, site_id = site_of(context)
    captions = training_captions(cfg.data, site_id, seed=cfg.run.seed)
    return SiteWordCounts.of(captions, cfg.data.vocabulary_min_count), cfg, site_id


@site_handler("query", QUERY_WORD_COUNTS)
def word_counts(msg: Message, context: Context) -> Message:
    """Only words seen at least ``data.vocabulary-min-count`` times leave, with their counts; under
    ``privacy.secure-sum`` without them (the site's own configuration decides: its counts then
    leave only masked). Captions and images stay."""
    counts, cfg, site_id = site_counts(context)
    record = counts.words_record() if cfg.privacy.secure_sum else counts.to_record()
    content = RecordDict({WORD_COUNTS: ConfigRecord(record), METRICS: MetricRecord({SITE_ID: site_id})})
    return Message(content=content, reply_to=msg)


@secure_sum_source(SECURE_SUM_WORD_COUNTS)
def word_count_contribution(msg: Message, context: Context, first: bool
                            ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """This site's counts on the union of words the request carries, checked here (the union holds
    every word this site sent) before they are masked; the reply names only the site."""
    counts, _, site_id = site_counts(context)
    request = msg.content.get(WORD_COUNTS)
    if not isinstance(request, ConfigRecord):
        raise ValueError("the secure word count request carries no union of words")
    return {COUNTS: counts.count_vector(request.get(WORDS))}, {SITE_ID: float(site_id)}
