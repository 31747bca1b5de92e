"""Ask every connected site once, before round 1, for something the server needs from all of
them (the spectral centroids, the feature moments, the task each site trains).

Flower's strategies only train and evaluate; these one-off questions are ``query.<what>``
messages sent straight through the Grid.
"""

from __future__ import annotations

import torch
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from omnirad.protocol import ARRAYS, QUERY_FEATURE_MOMENTS
from omnirad.standardise import FeatureMoments, Standardisation


def ask_sites(grid: Grid, nodes: list[int], action: str, timeout: float = 600.0, *,
              content: RecordDict | None = None) -> tuple[dict[int, RecordDict], dict[int, str]]:
    """One ``query.<action>`` message (carrying ``content``) to each of ``nodes``: the replies by
    node id, and for each node that did not answer or answered with an error, why."""
    messages = [Message(content=RecordDict(dict(content.items())) if content is not None else RecordDict(),
                        dst_node_id=node, message_type=f"query.{action}") for node in nodes]
    replies = {reply.metadata.src_node_id: reply for reply in grid.send_and_receive(messages, timeout=timeout)}
    contents, failed = {}, {}
    for node in nodes:
        reply = replies.get(node)
        if reply is None or reply.has_error():
            failed[node] = "no reply" if reply is None else reply.error.reason
        else:
            contents[node] = reply.content
    return contents, failed


def ask_every_site(grid: Grid, action: str, purpose: str, timeout: float = 600.0, *,
                   content: RecordDict | None = None) -> dict[int, RecordDict]:
    """Each connected node's reply to one ``query.<action>`` message (carrying ``content``), by
    node id. Raises ``RuntimeError`` naming ``purpose`` and the node when a reply is missing or
    failed: what the server builds from the replies would be wrong without every site."""
    contents, failed = ask_sites(grid, sorted(grid.get_node_ids()), action, timeout, content=content)
    for node, reason in failed.items():
        raise RuntimeError(f"{purpose}: node {node} did not answer ({reason})")
    return contents


def collect_standardisation(grid: Grid, timeout: float = 600.0) -> tuple[Standardisation, int]:
    """The feature standardisation pooled from every site's moments, and the images it covers.
    Raises ``RuntimeError`` naming the node whose moments are missing or malformed."""
    pooled = None
    for node, content in ask_every_site(grid, QUERY_FEATURE_MOMENTS, "feature standardisation", timeout).items():
        arrays = content.get(ARRAYS)
        try:
            if arrays is None:
                raise ValueError("no arrays in the reply")
            moments = FeatureMoments.from_arrays(
                {k: torch.from_numpy(v.numpy()) for k, v in arrays.items()}, f"node {node}")
            pooled = moments if pooled is None else pooled + moments
        except ValueError as err:
            raise RuntimeError(f"feature standardisation: node {node}: {err}") from err
    if pooled is None:
        raise RuntimeError("feature standardisation: no site is connected")
    return Standardisation.from_moments(pooled), pooled.count
