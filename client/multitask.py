"""A site's answer in a multi-task federation: the task it trains."""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, RecordDict

from omnirad.multitask import declaration
from omnirad.protocol import DECLARATION, QUERY_TASK, SITE_ID
from omnirad_fl.client.deployment import site_of
from omnirad_fl.client.site_handlers import site_handler


@site_handler("query", QUERY_TASK)
def declare_task(msg: Message, context: Context) -> Message:
    """What this site trains (task name, kind, label names), for the server's task groups."""
    cfg, site_id = site_of(context)
    found = declaration(cfg)
    record = ConfigRecord({SITE_ID: site_id, **(found.to_record() if found is not None else {})})
    return Message(content=RecordDict({DECLARATION: record}), reply_to=msg)
