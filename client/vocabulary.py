"""A site's answer for the federated caption vocabulary."""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from omnirad.data.sites import training_captions
from omnirad.protocol import METRICS, QUERY_WORD_COUNTS, SITE_ID, WORD_COUNTS
from omnirad.vocabulary import SiteWordCounts
from omnirad_fl.client.deployment import site_of
from omnirad_fl.client.site_handlers import site_handler


@site_handler("query", QUERY_WORD_COUNTS)
def word_counts(msg: Message, context: Context) -> Message:
    """How often this site's training captions use each word: only words seen at least
    ``data.vocabulary-min-count`` times leave; captions and images stay."""
    cfg, site_id = site_of(context)
    counts = SiteWordCounts.of(training_captions(cfg, site_id), cfg.data.vocabulary_min_count)
    content = RecordDict({WORD_COUNTS: ConfigRecord(counts.to_record()), METRICS: MetricRecord({SITE_ID: site_id})})
    return Message(content=content, reply_to=msg)
