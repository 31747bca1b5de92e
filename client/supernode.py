"""Flower's SuperNode, with its waits shortened while a run is under way.

Flower 1.42's SuperNode loop (``flwr.supernode.start_client_internal``) asks the SuperLink for a
message and, when there is none, sleeps a fixed 3 s; it checks for the ClientApp's reply every
0.5 s. Neither has a setting. In a round that is a train and an evaluate message per site, so a
deployed round waited about 2 x (1.5 s on average, 3 s at worst) + 2 x 0.25 s for nothing, more
than the site runtime takes to answer. This launcher runs Flower's own ``flower-supernode`` command
with that module's clock replaced: for ``EAGER_SECONDS`` after a message arrived (a run is under
way; the next message comes within seconds) or after the SuperNode started, an idle wait is
``EAGER_POLL`` seconds; after that it
is Flower's 3 s again, so an idle site asks no more often than Flower's. Waits for a reply are
``REPLY_POLL``. Everything else (the protocol, TLS, authentication, retries) is Flower's.

The SuperExec that starts each ClientApp has its own poll, which Flower does expose
(``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``, default 1 s): ``omnirad-client`` sets it.
"""

from __future__ import annotations

import time
from types import ModuleType
from typing import Any

IDLE_WAIT = 3.0  # Flower's wait after an empty pull (start_client_internal.py); other waits are its reply polls
EAGER_SECONDS = 120.0
EAGER_POLL = 0.25
REPLY_POLL = 0.05
SUPEREXEC_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"
SUPEREXEC_POLL = "0.05"


class EagerClock:
    """Stands in for the ``time`` module inside Flower's SuperNode loop (see the module doc)."""

    def __init__(self, clock: ModuleType = time) -> None:
        self._clock = clock
        # monotonic time of the last message pulled; a site that just started is about to be asked
        # (the server waits for its sites to connect, then sends the first query)
        self.last_message = clock.monotonic()

    def message_pulled(self) -> None:
        self.last_message = self._clock.monotonic()

    def wait_for(self, seconds: float) -> float:
        """How long Flower's ``time.sleep(seconds)`` should really wait."""
        if seconds != IDLE_WAIT:
            return min(seconds, REPLY_POLL)
        under_way = self._clock.monotonic() - self.last_message < EAGER_SECONDS
        return EAGER_POLL if under_way else IDLE_WAIT

    def sleep(self, seconds: float) -> None:
        self._clock.sleep(self.wait_for(seconds))

    def __getattr__(self, name: str) -> Any:  # time.time, time.monotonic, ...: the real ones
        return getattr(self._clock, name)


def install(loop: ModuleType | None = None) -> EagerClock:
    """Replace the clock of Flower's SuperNode loop module and note each pulled message. Fails
    loudly if a Flower upgrade renamed what this relies on, rather than silently keeping the 3 s wait."""
    if loop is None:
        from flwr.supernode import start_client_internal as loop
    if not isinstance(getattr(loop, "time", None), ModuleType) or not callable(getattr(loop, "_pull_and_store_message", None)):
        raise ImportError(f"{loop.__name__} no longer has the time module and _pull_and_store_message this launcher "
                          "shortens; check client/supernode.py against the installed Flower")
    clock = EagerClock(loop.time)
    pull = loop._pull_and_store_message

    def pull_and_note(*args: Any, **kwargs: Any) -> int | None:
        run_id: int | None = pull(*args, **kwargs)
        if run_id is not None:
            clock.message_pulled()
        return run_id

    loop.time = clock  # type: ignore[assignment]  # duck-typed: only .sleep differs
    loop._pull_and_store_message = pull_and_note
    return clock


def main() -> None:
    from flwr.supernode.cli import flower_supernode  # the whole SuperNode: imported only to run it

    install()
    flower_supernode()


if __name__ == "__main__":
    main()
