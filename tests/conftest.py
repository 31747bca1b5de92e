"""Test-wide settings: offline, loopback-only, quiet."""

import os

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from omnirad.protocol import ROUND_TOKEN, SITE_INFO
from omnirad_fl.strategies import wrapper

# Before anything imports huggingface_hub (it reads these once): never touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

MOCK_ROUND_TOKEN = "mock-round-token"  # what mock replies echo (fixture ``mock_round_token``)


def answering(content: RecordDict) -> RecordDict:
    """A mock train reply's content as a site sends it: echoing the round's token (``mock_round_token``)."""
    return RecordDict({**content, SITE_INFO: ConfigRecord({ROUND_TOKEN: MOCK_ROUND_TOKEN})})


class FakeGrid:
    """Just enough of Flower's Grid for a strategy's configure_* calls: the connected node ids."""

    def __init__(self, num_nodes: int) -> None:
        self.num_nodes = num_nodes

    def get_node_ids(self):
        return list(range(100, 100 + self.num_nodes))


class QueryGrid:
    """A grid whose sites answer one ``query.<action>`` message each: with the given content, or
    (``None``) with an error, as a crashed site would."""

    def __init__(self, action: str, answers: dict[int, RecordDict | None]) -> None:
        self.action, self.answers = action, answers

    def get_node_ids(self):
        return list(self.answers)

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for msg in messages:
            assert msg.metadata.message_type == f"query.{self.action}"
            answer = self.answers[msg.metadata.dst_node_id]
            replies.append(Message(Error(code=0, reason="site crashed"), reply_to=msg) if answer is None
                           else Message(answer, reply_to=msg))
        return replies


@pytest.fixture
def mock_round_token(monkeypatch):
    """Every training round's token is ``MOCK_ROUND_TOKEN``, which mock replies (``answering``) echo."""
    monkeypatch.setattr(wrapper, "new_round_token", lambda: MOCK_ROUND_TOKEN)


@pytest.fixture
def start_round(mock_round_token):
    """Send a round's training messages through the strategy, as its start loop does, without a network."""

    def start(strategy, server_round: int, global_state: dict, num_sites: int) -> list:
        return list(strategy.configure_train(server_round, ArrayRecord(global_state), ConfigRecord(), FakeGrid(num_sites)))

    return start


@pytest.fixture
def task_identity():
    """Messages take their run and node ids from the process's task identity, as in a ServerApp."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 7, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved
