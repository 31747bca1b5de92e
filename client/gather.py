"""A site's answers to the gathering queries before round 1: summaries only, never images (the
feature moments also as a contribution to a secure sum, under ``privacy.secure-sum``)."""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, Context, Message, RecordDict

from omnirad.protocol import ARRAYS, QUERY_FEATURE_MOMENTS, QUERY_SPECTRAL, SITE_ID
from omnirad.site_cache import get_site
from omnirad.standardise import SECURE_SUM_MOMENTS, FeatureMoments
from omnirad_fl.client.deployment import site_of
from omnirad_fl.client.secure_sum import secure_sum_source
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


@secure_sum_source(SECURE_SUM_MOMENTS)
def moments_contribution(msg: Message, context: Context, first: bool) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """The same moments as blocks of a secure sum, checked here first (a count of at least one
    image, finite sums), as the server would check them in the clear."""
    cfg, site_id = site_of(context)
    moments = get_site(cfg, site_id).feature_moments()
    FeatureMoments.from_arrays(moments.to_arrays(), "this site")
    return moments.to_sum_blocks(), {SITE_ID: float(site_id)}
