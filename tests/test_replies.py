"""A training reply is read only when it answers this round's instruction and is no larger than the
adapter it answers: a replayed message, a site that answers with what it kept from an earlier round
or another run, or an oversized reply is left out before aggregation, with its reason recorded."""

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from omnirad.configure import load_config
from omnirad.protocol import ROUND_TOKEN, SITE_INFO
from omnirad_fl.server.run_folder import RunFolder
from omnirad_fl.strategies import build_strategy
from omnirad_fl.strategies.validation import REPLY_ALLOWANCE_BYTES
from tests.conftest import FakeGrid

pytestmark = pytest.mark.usefixtures("task_identity")
GLOBAL = {"fc.weight": torch.zeros(4, 8), "fc.bias": torch.zeros(4)}


def strategy_for(tmp_path, **overrides):
    cfg = load_config({"run.output-dir": str(tmp_path), "data.num-sites": 3, **overrides})
    folder = RunFolder.create(cfg)
    return folder, build_strategy(cfg, folder)


def send_round(strategy, server_round: int) -> list[Message]:
    return list(strategy.configure_train(server_round, ArrayRecord(GLOBAL), ConfigRecord(), FakeGrid(3)))


def token_of(message: Message) -> str:
    return str(message.content["config"][ROUND_TOKEN])


def answer(site: int, token: str, value: float = 1.0, extra: dict | None = None, metrics: dict | None = None) -> Message:
    """A site's training reply echoing ``token``, as the ClientApp builds it."""
    state = {"fc.weight": torch.full((4, 8), value), "fc.bias": torch.full((4,), value), **(extra or {})}
    content = RecordDict({"arrays": ArrayRecord(state),
                          "metrics": MetricRecord({"num-examples": 100, "site-id": site, **(metrics or {})}),
                          SITE_INFO: ConfigRecord({"device": "cpu", "precision": "fp32", ROUND_TOKEN: token})})
    return Message(content=content, dst_node_id=0, message_type=MessageType.TRAIN)


def test_every_site_gets_the_rounds_token_and_every_round_a_new_one(tmp_path):
    _, strategy = strategy_for(tmp_path)
    first, second = send_round(strategy, 1), send_round(strategy, 2)
    assert len({token_of(m) for m in first}) == 1 and len({token_of(m) for m in second}) == 1
    assert token_of(first[0]) != token_of(second[0]) and len(token_of(first[0])) == 32
    _, another_run = strategy_for(tmp_path)
    assert token_of(send_round(another_run, 1)[0]) not in {token_of(first[0]), token_of(second[0])}


@pytest.mark.parametrize("validate", [True, False])
def test_replies_to_an_earlier_round_or_another_run_are_left_out(tmp_path, validate):
    folder, strategy = strategy_for(tmp_path, **{"strategy.validate-updates": validate})
    earlier = token_of(send_round(strategy, 1)[0])
    strategy.aggregate_train(1, [answer(s, earlier) for s in range(3)])
    folder.end_round(1, {})
    _, other = strategy_for(tmp_path / "other")
    foreign = token_of(send_round(other, 1)[0])
    now = token_of(send_round(strategy, 2)[0])
    replies = [answer(0, now, 2.0), answer(1, earlier, 50.0), answer(2, foreign, 50.0)]
    unsigned = answer(2, now, 50.0)
    del unsigned.content[SITE_INFO]
    arrays, _ = strategy.aggregate_train(2, [*replies, unsigned])
    np.testing.assert_allclose(arrays["fc.weight"].numpy(), 2.0)  # site 0's alone
    line = folder.end_round(2, {})
    assert len(line["rejected"]) == 3
    assert all("does not answer this round's instruction" in reason for reason in line["rejected"])
    assert "site 1: " in line["rejected"][0] and "site 2: " in line["rejected"][1]


@pytest.mark.parametrize("excess", ["arrays", "metrics"])
def test_a_reply_larger_than_the_adapter_it_answers_is_left_out(tmp_path, excess):
    folder, strategy = strategy_for(tmp_path, **{"strategy.validate-updates": False})
    now = token_of(send_round(strategy, 1)[0])
    padding = REPLY_ALLOWANCE_BYTES // 4 + 1024  # float32s: just over what a reply may carry beyond the adapter
    oversized = (answer(1, now, 50.0, extra={"hidden": torch.zeros(padding)}) if excess == "arrays"
                 else answer(1, now, 50.0, metrics={f"m{i}": 0.0 for i in range(REPLY_ALLOWANCE_BYTES // 16 + 1)}))
    arrays, _ = strategy.aggregate_train(1, [answer(0, now, 2.0), oversized, answer(2, now, 4.0)])
    np.testing.assert_allclose(arrays["fc.bias"].numpy(), 3.0)  # sites 0 and 2
    (reason,) = folder.end_round(1, {})["rejected"]
    assert reason.startswith("site 1: it holds") and "more than the" in reason
