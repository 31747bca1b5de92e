"""Flower's Grid, taking each reply as soon as it is there.

Flower 1.42's deployment Grid (``flwr.superlink.grid.http_grid``) looks for replies every 3 s in
``send_and_receive``, with no setting; the simulation's looks every 0.1 s. A deployed round sends
two messages per site (train, evaluate), so it waited up to 6 s for replies already there. This
wrapper sends with the Grid's own ``push_messages`` and collects with its ``pull_messages``, first
after ``FIRST_POLL`` seconds and then less often, up to ``LONGEST_POLL``: a round costs a few cheap
requests to the SuperLink instead of seconds. Everything else is the wrapped Grid's.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid

FIRST_POLL = 0.01
LONGEST_POLL = 0.1
BACKOFF = 1.5


class PromptGrid:
    """``grid`` with a prompter ``send_and_receive`` (see the module doc); same contract as Flower's:
    the replies that arrived before ``timeout`` seconds (``None``: wait for all)."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        waiting = set(self._grid.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        poll = FIRST_POLL
        while waiting:
            arrived = list(self._grid.pull_messages(waiting))
            replies.extend(arrived)
            waiting -= {reply.metadata.reply_to_message_id for reply in arrived}
            left = None if deadline is None else deadline - time.monotonic()
            if not waiting or (left is not None and left <= 0):
                break
            time.sleep(poll if left is None else min(poll, left))
            poll = min(poll * BACKOFF, LONGEST_POLL)
        return replies

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)
