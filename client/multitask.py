"""A site's answer in a multi-task federation: the task it trains."""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, RecordDict

from omnirad.multitask import declaration
from omnirad.protocol import DECLARATION, QUERY_TASK, SITE_ID
from omnirad_fl.client.deployment import site_plan, task_name, task_view
from omnirad_fl.client.site_handlers import site_handler


@site_handler("query", QUERY_TASK)
def declare_task(msg: Message, context: Context) -> Message:
    """What this site trains (task name, kind, label names), for the server's task groups."""
    plan, site_id = site_plan(context)
    name = task_name(plan, site_id, context.node_config)
    found = declaration(name, task_view(plan, site_id, context.node_config).data)
    record = ConfigRecord({SITE_ID: site_id, **(found.to_record() if found is not None else {})})
    return Message(content=RecordDict({DECLARATION: record}), reply_to=msg)
