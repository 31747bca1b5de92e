"""A site's answers to the gathering queries before round 1: summaries only, never images."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, RecordDict

from omnirad.protocol import ARRAYS, QUERY_FEATURE_MOMENTS, QUERY_SPECTRAL
from omnirad.site_cache import get_site
from omnirad_fl.client.deployment import site_of
from omnirad_fl.client.site_handlers import site_handler


@site_handler("query", QUERY_SPECTRAL)
def spectral_prototypes(msg: Message, context: Context) -> Message:
    """This site's contribution to the spectral knowledge bank: a few centroids, never images."""
    site = get_site(*site_of(context))
    content = RecordDict({ARRAYS: ArrayRecord({"prototypes": site.spectral_prototypes()})})
    return Message(content=content, reply_to=msg)


@site_handler("query", QUERY_FEATURE_MOMENTS)
def feature_moments(msg: Message, context: Context) -> Message:
    """Count, sum and sum of squares of this site's training features, for the pooled feature
    standardisation (``model.standardise-features``); no single image's features leave."""
    site = get_site(*site_of(context))
    content = RecordDict({ARRAYS: ArrayRecord(site.feature_moments().to_arrays())})
    return Message(content=content, reply_to=msg)
