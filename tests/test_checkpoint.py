"""Checkpoints after every round and resuming from them, with mock replies and no network."""

import json

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import save_file

from omnirad.config import ConfigError
from omnirad.configure import load_config
from omnirad.durable import sha256_of
from omnirad_fl.server.checkpoint import MARK, expected_arrays, load_checkpoint, restore_strategy_state, save_checkpoint
from omnirad_fl.server.core_phases import resumable
from omnirad_fl.server.run_folder import RunFolder
from omnirad_fl.strategies import build_strategy, flower_strategy
from tests.conftest import answering

pytestmark = pytest.mark.usefixtures("task_identity", "mock_round_token")
FEATURES = 192  # the default model's (vit-tiny, linear head on 4 classes): a checkpoint must fit it
GLOBAL = {"fc.weight": torch.zeros(4, FEATURES), "fc.bias": torch.zeros(4)}


def reply(site: int, value: float) -> Message:
    state = {"fc.weight": torch.full((4, FEATURES), value + site), "fc.bias": torch.full((4,), value)}
    metrics = MetricRecord({"num-examples": 100, "site-id": site})
    return Message(content=answering(RecordDict({"arrays": ArrayRecord(state), "metrics": metrics})), dst_node_id=0,
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
    # a kill while round 2 was written: its adapter whole, its strategy state cut short, no new mark
    (folder.path / "checkpoint-round-2.safetensors").write_bytes(b"a round-2 file nobody committed")
    (folder.path / ".strategy-state-round-2.safetensors.123.tmp").write_bytes(b"a write cut short")
    checkpoint = load_checkpoint(folder.path)
    assert checkpoint.server_round == 1 and json.loads((folder.path / MARK).read_text())["round"] == 1
    torch.testing.assert_close(checkpoint.arrays, GLOBAL, rtol=0, atol=0)
    save_checkpoint(folder.path, 2, GLOBAL, strategy)  # the next commit removes what the mark no longer names
    assert sorted(p.name for p in folder.path.glob("*round-*")) == ["checkpoint-round-2.safetensors",
                                                                   "strategy-state-round-2.safetensors"]


def fedadam_after_two_rounds(tmp_path, start_round, name: str = "fedadam"):
    cfg = load_config({"run.output-dir": str(tmp_path), "data.num-sites": 2, "strategy.name": name})
    folder = RunFolder.create(cfg)
    strategy = build_strategy(cfg, folder)
    state = a_round(strategy, start_round, 1, GLOBAL, run_round=1)
    state = a_round(strategy, start_round, 2, state, run_round=2)
    return cfg, folder, strategy, state


def as_arrays(value) -> dict[str, np.ndarray]:
    """A strategy attribute's arrays by key, whatever container Flower keeps them in."""
    if isinstance(value, ArrayRecord):
        return {k: a.numpy() for k, a in value.items()}
    return dict(value) if isinstance(value, dict) else {str(i): a for i, a in enumerate(value)}


@pytest.mark.parametrize(("name", "attributes"), [("fedadam", {"current_arrays", "m_t", "v_t"}),
                                                  ("fedavgm", {"current_arrays", "momentum_vector"})])
def test_strategy_state_is_restored_bit_for_bit_and_in_its_own_containers(tmp_path, start_round, name, attributes):
    _, folder, strategy, state = fedadam_after_two_rounds(tmp_path, start_round, name)
    save_checkpoint(folder.path, 2, state, strategy)
    assert not list(folder.path.glob("*.pkl"))
    checkpoint = load_checkpoint(folder.path)
    assert set(checkpoint.strategy_state) == attributes
    original = flower_strategy(strategy)
    for attribute, restored in checkpoint.strategy_state.items():
        before = getattr(original, attribute)
        assert type(restored) is type(before)
        expected, got = as_arrays(before), as_arrays(restored)
        assert list(got) == list(expected)  # same keys, same order
        for key in expected:
            assert got[key].dtype == expected[key].dtype and got[key].shape == expected[key].shape
            assert got[key].tobytes() == expected[key].tobytes()
    for key in state:
        assert torch.equal(checkpoint.arrays[key], state[key])


def test_an_old_checkpoint_with_a_pickle_is_refused_unread(tmp_path):
    (tmp_path / MARK).write_text(json.dumps({"round": 3}))
    (tmp_path / "strategy-state.pkl").write_bytes(b"not unpickled: loading a pickle can run code")
    (tmp_path / "checkpoint.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"checkpoint.json has no format version.*strategy-state.pkl, a pickle"):
        load_checkpoint(tmp_path)
    (tmp_path / MARK).write_text(json.dumps({"round": 3, "version": 99}))
    with pytest.raises(ConfigError, match="checkpoint.json has format version 99; this OmniRad-FL reads checkpoint version 2"):
        load_checkpoint(tmp_path)
    (tmp_path / MARK).write_text("{not json")
    with pytest.raises(ConfigError, match="checkpoint.json is not valid JSON"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("target", ["checkpoint-round-2.safetensors", "strategy-state-round-2.safetensors"])
def test_a_checkpoint_file_changed_after_it_was_written_is_refused(tmp_path, start_round, target):
    _, folder, strategy, state = fedadam_after_two_rounds(tmp_path, start_round)
    save_checkpoint(folder.path, 2, state, strategy)
    path = folder.path / target
    data = bytearray(path.read_bytes())
    data[-1] ^= 1  # one bit of one tensor
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=f"{target} does not match the SHA-256 that checkpoint.json records"):
        load_checkpoint(folder.path)


def test_a_mark_that_points_outside_the_run_folder_is_refused(tmp_path, start_round):
    _, folder, strategy, state = fedadam_after_two_rounds(tmp_path, start_round)
    save_checkpoint(folder.path, 2, state, strategy)
    mark = json.loads((folder.path / MARK).read_text())
    mark["arrays"]["file"] = "../elsewhere.safetensors"
    (folder.path / MARK).write_text(json.dumps(mark))
    with pytest.raises(ConfigError, match="names arrays file '../elsewhere.safetensors', which is not a file in the run"):
        load_checkpoint(folder.path)
    del mark["arrays"]
    (folder.path / MARK).write_text(json.dumps(mark))
    with pytest.raises(ConfigError, match="has no file and SHA-256 for arrays"):
        load_checkpoint(folder.path)


def test_reopening_checks_the_configuration_and_drops_rounds_after_the_checkpoint(tmp_path):
    flat = {"run.output-dir": str(tmp_path), "data.num-sites": 2, "num-server-rounds": 3}
    folder = RunFolder.create(load_config(flat))
    for server_round in (1, 2, 3):
        folder.end_round(server_round, {"accuracy": 0.1 * server_round})
    resume = {**flat, "run.resume-from": str(folder.path), "num-server-rounds": 5}
    reopened = RunFolder.reopen(load_config(resume), folder.path, done_rounds=2)
    assert [r["round"] for r in reopened.rounds] == [1, 2]
    assert len((folder.path / "metrics.jsonl").read_text().splitlines()) == 2
    with pytest.raises(ConfigError, match="train.lr: the run has 0.003, this configuration 0.1"):
        RunFolder.reopen(load_config({**resume, "train.lr": 0.1}), folder.path, done_rounds=2)


def test_resume_needs_a_run_folder_and_is_open_to_runs_with_state_at_the_sites(tmp_path, start_round):
    with pytest.raises(ConfigError, match="no such run folder"):
        resumable(load_config({"run.resume-from": str(tmp_path / "missing")}))
    for kept in ({"privacy.dp": True}, {"strategy.name": "fedper", "model.adapter": "mlp"},
                 {"strategy.name": "spectral"}):
        flat = {"run.output-dir": str(tmp_path / str(kept)), "data.num-sites": 2, **kept}
        cfg = load_config(flat)
        folder = RunFolder.create(cfg)
        arrays = {k: torch.zeros_like(v) for k, v in expected_arrays(cfg).items()}
        save_checkpoint(folder.path, 2, arrays, build_strategy(cfg, folder))
        _, checkpoint = resumable(load_config({**flat, "run.resume-from": str(folder.path)}))
        assert checkpoint.server_round == 2


# Issue 32, item 6 (the pre-check): a resumed run is the stopped run, configured alike.

def test_a_resumed_run_whose_configuration_changes_the_run_is_refused_naming_every_key(tmp_path, start_round):
    """Before, RunFolder.reopen named the keys but only the first one's values, and only after the
    checkpoint was loaded (and, in deployment, the sites waited for); now resumable refuses first,
    with every key and both values, and the keys a resumed run may change pass."""
    cfg, folder, strategy, state = fedadam_after_two_rounds(tmp_path, start_round)
    save_checkpoint(folder.path, 2, state, strategy)
    (folder.path / MARK).unlink()  # the configuration is refused before the checkpoint is looked at
    base = {"run.output-dir": str(tmp_path), "data.num-sites": 2, "strategy.name": "fedadam",
            "run.resume-from": str(folder.path)}
    changed = {"model.encoder": "radiodino-s16", "model.adapter": "mlp", "data.num-classes": 5, "data.num-sites": 3}
    with pytest.raises(ConfigError) as refused:
        resumable(load_config({**base, **changed}))
    message = str(refused.value)
    assert f"run.resume-from={folder.path}" in message and "config.yaml" in message
    for line in ("model.encoder: the run has 'vit-tiny', this configuration 'radiodino-s16'",
                 "model.adapter: the run has 'linear', this configuration 'mlp'",
                 "data.num-classes: the run has 0, this configuration 5",
                 "data.num-sites: the run has 2, this configuration 3"):
        assert line in message
    save_checkpoint(folder.path, 2, state, strategy)
    allowed = {"num-server-rounds": 40, "strategy.join-timeout": 10.0, "strategy.round-timeout": 60.0,
               "run.verbose": True, "run.output-dir": str(tmp_path / "elsewhere")}
    _, checkpoint = resumable(load_config({**base, **allowed}))
    assert checkpoint.server_round == 2
    assert RunFolder.reopen(load_config({**base, **allowed}), folder.path, done_rounds=2).path == folder.path


# Issue 32, item 6: a checkpoint is checked against the run's model, not only against its own mark.

def rewrite(folder, part: str, tensors: dict) -> None:
    """Replace a checkpoint file and the SHA-256 its mark records, as someone who can write the folder could."""
    mark = json.loads((folder / MARK).read_text())
    path = folder / mark[part]["file"]
    if part == "arrays":
        save_file({k: v.contiguous() for k, v in tensors.items()}, path)
    else:
        save_numpy(tensors, path)
    mark[part]["sha256"] = sha256_of(path)
    (folder / MARK).write_text(json.dumps(mark))


@pytest.mark.parametrize(("tampered", "named"), [
    ({"fc.weight": torch.zeros(4, 8), "fc.bias": torch.zeros(4)}, r"'fc.weight' is torch.float32 \(4, 8\), the model's is torch.float32 \(4, 192\)"),
    ({**GLOBAL, "extra": torch.zeros(3)}, "a tensor the model does not have: 'extra'"),
    ({"fc.bias": torch.zeros(4)}, "missing tensor 'fc.weight'"),
    ({**GLOBAL, "fc.bias": torch.zeros(4, dtype=torch.float64)}, "'fc.bias' is torch.float64"),
    ({**GLOBAL, "fc.bias": torch.tensor([0.0, float("nan"), 0.0, 0.0])}, "'fc.bias' holds NaN or infinite values"),
])
def test_arrays_rewritten_with_their_sha256_are_refused_unless_they_fit_the_model(tmp_path, start_round, tampered,
                                                                                   named):
    _, folder, strategy, state = fedadam_after_two_rounds(tmp_path, start_round)
    save_checkpoint(folder.path, 2, state, strategy)
    rewrite(folder.path, "arrays", tampered)
    with pytest.raises(ConfigError, match=r"checkpoint-round-2.safetensors .*not a checkpoint of this run's model"
                       rf"(.|\n)*{named}"):
        load_checkpoint(folder.path)
    resume = load_config({"run.output-dir": str(tmp_path), "data.num-sites": 2, "strategy.name": "fedadam",
                          "run.resume-from": str(folder.path)})
    with pytest.raises(ConfigError, match="not a checkpoint of this run's model"):
        resumable(resume)  # what the ServerApp calls before RunFolder.reopen


def test_strategy_state_rewritten_with_its_sha256_must_fit_the_model(tmp_path, start_round):
    _, folder, strategy, state = fedadam_after_two_rounds(tmp_path, start_round)
    save_checkpoint(folder.path, 2, state, strategy)
    tensors = load_numpy(folder.path / "strategy-state-round-2.safetensors")
    tensors["m_t/fc.weight"] = np.zeros((7, 7), dtype=np.float32)
    rewrite(folder.path, "strategy-state", tensors)
    with pytest.raises(ConfigError, match=r"strategy state m_t/fc.weight has shape \(7, 7\)"):
        load_checkpoint(folder.path)
    tensors["m_t/fc.weight"] = np.full((4, FEATURES), np.inf, dtype=np.float32)
    rewrite(folder.path, "strategy-state", tensors)
    with pytest.raises(ConfigError, match="strategy state m_t/fc.weight is not finite"):
        load_checkpoint(folder.path)


@pytest.mark.parametrize("link", ["checkpoint-round-2.safetensors", MARK])
def test_a_checkpoint_file_that_is_a_symbolic_link_is_not_followed(tmp_path, start_round, link):
    _, folder, strategy, state = fedadam_after_two_rounds(tmp_path / "runs", start_round)
    save_checkpoint(folder.path, 2, state, strategy)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (folder.path / link).rename(outside / link)  # the same bytes (SHA-256 and all), outside the run folder
    (folder.path / link).symlink_to(outside / link)
    with pytest.raises(ConfigError, match=f"{link} .*is a symbolic link"):
        load_checkpoint(folder.path)


class NoSitesYet:
    """A deployed federation nobody has joined: asking who is connected is what the run must not do
    before it has checked a resumed configuration."""

    def get_node_ids(self):
        raise AssertionError("the run waited for sites before checking the resumed configuration")


def test_the_serverapp_checks_a_resumed_configuration_before_it_waits_for_sites(tmp_path, start_round):
    """``flwr run`` with run.resume-from (no omnirad-server pre-check) fails in the phases' first
    stage, naming the key, before the federation stage asks for sites; a configuration that leaves
    data.num-sites to the federation passes that early check (the size is checked once known)."""
    from omnirad_fl.server import app  # noqa: F401 - the ServerApp's module registers every phase
    from omnirad_fl.server.phases import ServerRun, run_phases
    from omnirad_fl.server.run_config import load_run_config

    cfg, folder, strategy, state = fedadam_after_two_rounds(tmp_path, start_round)
    save_checkpoint(folder.path, 2, state, strategy)
    resume = {"run.output-dir": str(tmp_path), "strategy.name": "fedadam", "run.resume-from": str(folder.path)}
    with pytest.raises(ConfigError, match="train.lr: the run has 0.003, this configuration 0.1"):
        run_phases(ServerRun(NoSitesYet(), load_run_config({**resume, "data.num-sites": 2, "train.lr": 0.1})))
    with pytest.raises(AssertionError, match="waited for sites"):  # the early check passed; the federation is next
        run_phases(ServerRun(NoSitesYet(), load_run_config(resume)))
