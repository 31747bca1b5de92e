"""Checkpoints after every round and resuming from them, with mock replies and no network."""

import json

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Message, MessageType, MetricRecord, RecordDict

from omnirad.config import ConfigError, load_config
from omnirad_fl.server.app import resumable
from omnirad_fl.server.checkpoint import MARK, load_checkpoint, restore_strategy_state, save_checkpoint
from omnirad_fl.server.run_folder import RunFolder
from omnirad_fl.strategies import build_strategy

pytestmark = pytest.mark.usefixtures("task_identity")
GLOBAL = {"fc.weight": torch.zeros(4, 8), "fc.bias": torch.zeros(4)}


def reply(site: int, value: float) -> Message:
    state = {"fc.weight": torch.full((4, 8), value + site), "fc.bias": torch.full((4,), value)}
    metrics = MetricRecord({"num-examples": 100, "site-id": site})
    return Message(content=RecordDict({"arrays": ArrayRecord(state), "metrics": metrics}), dst_node_id=0,
                   message_type=MessageType.TRAIN)


def a_round(strategy, start_round, flower_round: int, state: dict, run_round: int) -> dict:
    """One round as Flower's loop drives it (``flower_round``), the sites replying as in ``run_round``."""
    start_round(strategy, flower_round, state, 2)
    arrays, _ = strategy.aggregate_train(flower_round, [reply(0, 0.5 * run_round), reply(1, 0.2 * run_round)])
    return arrays.to_torch_state_dict()


@pytest.mark.parametrize("name", ["fedadam", "fedavgm"])
def test_a_resumed_strategy_aggregates_as_the_uninterrupted_one(tmp_path, start_round, name):
    """FedAdam's moments and FedAvgM's momentum survive the checkpoint; rounds keep their numbers."""
    cfg = load_config({"run.output-dir": str(tmp_path), "data.num-sites": 2, "strategy.name": name})
    folder = RunFolder.create(cfg)
    uninterrupted = build_strategy(cfg, folder)
    state = a_round(uninterrupted, start_round, 1, GLOBAL, run_round=1)
    save_checkpoint(folder.path, 1, state, uninterrupted)
    expected = a_round(uninterrupted, start_round, 2, state, run_round=2)

    checkpoint = load_checkpoint(folder.path)
    assert checkpoint.server_round == 1
    resumed = build_strategy(cfg, folder, done_rounds=checkpoint.server_round)
    restore_strategy_state(resumed, checkpoint.strategy_state)
    got = a_round(resumed, start_round, 1, checkpoint.arrays, run_round=2)  # Flower's loop counts from 1 again
    for key in expected:
        np.testing.assert_allclose(got[key].numpy(), expected[key].numpy(), rtol=1e-6)


def test_resumed_rounds_are_numbered_on(tmp_path, start_round):
    cfg = load_config({"run.output-dir": str(tmp_path), "data.num-sites": 2, "strategy.name": "fedprox"})
    messages = start_round(build_strategy(cfg, RunFolder.create(cfg), done_rounds=3), 1, GLOBAL, 2)
    assert {m.content["config"]["server-round"] for m in messages} == {4}


def test_the_checkpoint_mark_is_written_last(tmp_path, start_round):
    cfg = load_config({"run.output-dir": str(tmp_path), "data.num-sites": 2})
    folder = RunFolder.create(cfg)
    strategy = build_strategy(cfg, folder)
    with pytest.raises(FileNotFoundError, match="checkpoint.json"):
        load_checkpoint(folder.path)
    save_checkpoint(folder.path, 1, GLOBAL, strategy)
    (folder.path / "checkpoint.safetensors.tmp").write_bytes(b"a write cut short")  # a kill mid-write
    assert load_checkpoint(folder.path).server_round == 1
    assert json.loads((folder.path / MARK).read_text()) == {"round": 1}


def test_reopening_checks_the_configuration_and_drops_rounds_after_the_checkpoint(tmp_path):
    flat = {"run.output-dir": str(tmp_path), "data.num-sites": 2, "num-server-rounds": 3}
    folder = RunFolder.create(load_config(flat))
    for server_round in (1, 2, 3):
        folder.end_round(server_round, {"accuracy": 0.1 * server_round})
    resume = {**flat, "run.resume-from": str(folder.path), "num-server-rounds": 5}
    reopened = RunFolder.reopen(load_config(resume), folder.path, done_rounds=2)
    assert [r["round"] for r in reopened.rounds] == [1, 2]
    assert len((folder.path / "metrics.jsonl").read_text().splitlines()) == 2
    with pytest.raises(ConfigError, match="train.lr"):
        RunFolder.reopen(load_config({**resume, "train.lr": 0.1}), folder.path, done_rounds=2)


def test_resume_is_refused_where_state_lives_at_the_sites(tmp_path):
    with pytest.raises(ConfigError, match="no such run folder"):
        resumable(load_config({"run.resume-from": str(tmp_path / "missing")}), frozenset())
    with pytest.raises(ConfigError, match="keep state at the sites"):
        resumable(load_config({"run.resume-from": str(tmp_path), "privacy.dp": True}), frozenset())
    with pytest.raises(ConfigError, match="keep state at the sites"):
        resumable(load_config({"run.resume-from": str(tmp_path)}), frozenset({"net.4.weight"}))
