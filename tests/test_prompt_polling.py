"""A deployed round waits for replies, not for Flower's fixed polls: the server's PromptGrid takes
replies as they arrive, the site's SuperNode launcher shortens its idle wait while a run is under way."""

import types

import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.supernode import start_client_internal as supernode_loop

from omnirad_fl.client import supernode
from omnirad_fl.server import prompt_grid
from omnirad_fl.server.prompt_grid import PromptGrid


class SlowGrid:
    """Replies to message ``i`` become available on the ``ready[i]``-th pull; records each pull."""

    def __init__(self, ready: list[int]) -> None:
        self.ready, self.pulls, self.node_ids = ready, 0, [5, 6]

    def push_messages(self, messages):
        self.sent = list(messages)
        return [f"m{i}" for i in range(len(self.sent))]

    def pull_messages(self, ids):
        self.pulls += 1
        return [Message(RecordDict({"c": ConfigRecord({"i": i})}), reply_to=self.sent[i])
                for i, pulls in enumerate(self.ready) if pulls == self.pulls and f"m{i}" in set(ids)]

    def get_node_ids(self):
        return self.node_ids


def messages(n):
    out = []
    for i in range(n):
        msg = Message(RecordDict(), dst_node_id=5 + i, message_type="train")
        msg.metadata.__dict__["_message_id"] = f"m{i}"  # what Flower sets on push
        out.append(msg)
    return out


@pytest.fixture
def waits(monkeypatch, task_identity):
    slept: list[float] = []
    monkeypatch.setattr(prompt_grid.time, "sleep", slept.append)
    return slept


def test_replies_are_collected_as_they_arrive_with_short_growing_waits(waits):
    grid = SlowGrid(ready=[2, 7])
    replies = PromptGrid(grid).send_and_receive(messages(2), timeout=None)
    assert sorted(int(r.content["c"]["i"]) for r in replies) == [0, 1]
    assert grid.pulls == 7  # stopped at the pull that brought the last reply
    assert waits[0] == prompt_grid.FIRST_POLL and max(waits) <= prompt_grid.LONGEST_POLL
    assert waits == sorted(waits)  # backs off, never past the longest poll
    assert sum(waits) < 3.0  # Flower's deployment Grid would have slept 3 s after each empty pull


def test_a_timeout_returns_what_arrived(monkeypatch, waits):
    clock = iter([0.0, 0.0, 0.5, 2.0, 9.0, 9.0])
    monkeypatch.setattr(prompt_grid.time, "monotonic", lambda: next(clock))
    grid = SlowGrid(ready=[1, 99])
    replies = PromptGrid(grid).send_and_receive(messages(2), timeout=1.0)
    assert [int(r.content["c"]["i"]) for r in replies] == [0]
    assert grid.pulls == 3  # at 0.0, 0.5 and past the deadline; then it gives up


def test_everything_but_send_and_receive_is_the_wrapped_grid():
    assert PromptGrid(SlowGrid([1])).get_node_ids() == [5, 6]


class FakeTime(types.ModuleType):
    def __init__(self):
        super().__init__("fake_time")
        self.now, self.slept = 1000.0, []

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)


def test_the_supernode_polls_eagerly_only_while_a_run_is_under_way():
    fake = FakeTime()
    clock = supernode.EagerClock(fake)
    clock.sleep(supernode.IDLE_WAIT)  # just started: the first message is on its way
    fake.now += supernode.EAGER_SECONDS
    clock.sleep(supernode.IDLE_WAIT)  # nothing came: Flower's own wait
    clock.message_pulled()
    fake.now += 10
    clock.sleep(supernode.IDLE_WAIT)  # a run is under way
    clock.sleep(0.5)  # waiting for the ClientApp's reply
    fake.now += supernode.EAGER_SECONDS
    clock.sleep(supernode.IDLE_WAIT)  # quiet for long enough: back to Flower's wait
    assert fake.slept == [supernode.EAGER_POLL, supernode.IDLE_WAIT, supernode.EAGER_POLL, supernode.REPLY_POLL,
                          supernode.IDLE_WAIT]
    assert clock.monotonic() == fake.now  # the rest of the time module is the real one


def test_the_launcher_patches_flowers_installed_supernode_loop(monkeypatch):
    monkeypatch.setattr(supernode_loop, "time", supernode_loop.time)  # restored after the test
    monkeypatch.setattr(supernode_loop, "_pull_and_store_message", lambda **kw: kw["run_id"])
    clock = supernode.install()
    assert supernode_loop.time is clock
    started = clock.last_message
    assert supernode_loop._pull_and_store_message(run_id=None) is None and clock.last_message == started
    assert supernode_loop._pull_and_store_message(run_id=7) == 7 and clock.last_message > started


def test_a_flower_without_what_the_launcher_patches_fails_loudly():
    with pytest.raises(ImportError, match="client/supernode.py"):
        supernode.install(types.ModuleType("flwr.supernode.start_client_internal"))
