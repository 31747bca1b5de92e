"""A site's state store: its privacy account and own tensors outlive the process, and a lost one is noticed."""

import json
import logging

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict
from safetensors import safe_open
from safetensors.torch import save_file

from omnirad.adapters import trainable_state
from omnirad.config import ConfigError
from omnirad.configure import load_config
from omnirad.models import new_model
from omnirad.privacy import PrivacyLedger
from omnirad.protocol import (
    NODE_DATA_FILE,
    NODE_STATE_DIR,
    RUN_KEY,
    SIMULATION_STATE_DIR,
    STATE_LOST,
    TRAINED_ROUNDS,
    TRAINED_SITES,
)
from omnirad.site_state import HEADER, SiteState, SiteStateError, SiteStateLost, SiteStateStore
from omnirad_fl.client import app as client_app
from omnirad_fl.client.run_state import state_folder
from omnirad_fl.server.run_folder import RunFolder
from omnirad_fl.simulations.flower_local import instruction
from omnirad_fl.strategies import build_strategy

SMALL = {"data.num-train": 240, "data.num-test": 60, "data.size": 32, "data.num-sites": 2, "data.partition": "iid",
         "train.local-epochs": 1, "num-server-rounds": 3}
DP_FEDPER = {**SMALL, "privacy.dp": True, "privacy.noise-multiplier": 1.5, "strategy.name": "fedper", "model.adapter": "mlp"}
KEY = "4f1c0ffee"


def tensors(value: float) -> dict[str, torch.Tensor]:
    return {"head.weight": torch.full((4, 3), value), "head.bias": torch.arange(4, dtype=torch.float64) + value}


def a_state() -> SiteState:
    state = SiteState(ledger=PrivacyLedger([(1.5, 0.25, 8), (1.5, 0.25, 8)]))
    state.trained(1, tensors(0.1))
    state.trained(2, tensors(0.2))
    return state


def assert_same(got: SiteState, expected: SiteState) -> None:
    assert got.trained_rounds == expected.trained_rounds and got.ledger.history == expected.ledger.history
    assert sorted(got.personal) == sorted(expected.personal)
    for server_round, named in expected.personal.items():
        for name, tensor in named.items():
            assert got.personal[server_round][name].dtype == tensor.dtype
            assert torch.equal(got.personal[server_round][name], tensor)


def test_a_runs_state_comes_back_whole_from_one_file_with_the_ledger_readable(tmp_path):
    store, state = SiteStateStore(tmp_path / "site-a"), a_state()
    assert_same(store.load(KEY), SiteState())  # nothing yet: a fresh state, and nothing written
    assert not (tmp_path / "site-a").exists()
    store.save(KEY, state)
    assert [p.name for p in (tmp_path / "site-a").iterdir()] == [f"{KEY}.safetensors"]
    assert_same(store.load(KEY), state)
    with safe_open(str(store.path(KEY)), framework="pt") as stored:  # no pickle: tensors and a JSON header
        header = json.loads(stored.metadata()[HEADER])
    assert header == {"version": 1, "trained-rounds": [1, 2],
                      "ledger": {"noise": [1.5, 1.5], "rate": [0.25, 0.25], "steps": [8, 8]}}


def test_a_save_cut_short_leaves_the_previous_state(tmp_path, monkeypatch):
    store, state = SiteStateStore(tmp_path), a_state()
    store.save(KEY, state)

    def killed(tensors, path, metadata=None):
        open(path, "wb").write(b"half a file")
        raise OSError("the disk filled up")

    later = a_state()
    later.trained(3, tensors(0.3))
    monkeypatch.setattr("omnirad.site_state.save_file", killed)
    with pytest.raises(OSError, match="disk filled up"):
        store.save(KEY, later)
    assert_same(store.load(KEY), state)
    assert [p.name for p in tmp_path.iterdir()] == [f"{KEY}.safetensors"]  # no temporary file left behind


def test_state_of_another_format_or_damaged_is_refused_without_naming_the_file(tmp_path, caplog):
    store = SiteStateStore(tmp_path)
    save_file({}, store.path(KEY), metadata={HEADER: json.dumps({"version": 99})})
    with pytest.raises(SiteStateError, match="format version 99; this OmniRad-FL reads version 1") as refused:
        store.load(KEY)
    assert str(tmp_path) not in str(refused.value) and str(store.path(KEY)) in caplog.text  # the path: in the log only
    save_file({}, store.path(KEY))
    with pytest.raises(SiteStateError, match="format version None"):
        store.load(KEY)
    store.path(KEY).write_bytes(b"\x00" * 40)
    with pytest.raises(SiteStateError, match="unreadable"):
        store.load(KEY)
    for bad in ("../../etc/passwd", "a/b", ".hidden", ""):
        with pytest.raises(SiteStateError, match="not a plain name"):
            store.path(bad)


def test_a_round_trained_again_starts_from_the_tensors_before_it_and_is_counted_again():
    state = a_state()
    state.trained(3, tensors(0.3))
    assert sorted(state.personal) == [2, 3]  # the last two rounds are kept
    assert torch.equal(state.personal_before(3)["head.weight"], tensors(0.2)["head.weight"])
    assert torch.equal(state.personal_after(3)["head.weight"], tensors(0.3)["head.weight"])
    state.trained(3, tensors(0.35))  # the server resumed after round 2: round 3 again
    assert state.trained_rounds == [1, 2, 3, 3] and sorted(state.personal) == [2, 3]
    assert torch.equal(state.personal[3]["head.weight"], tensors(0.35)["head.weight"])
    with pytest.raises(SiteStateError, match="only, not those it trained before round 2"):
        state.personal_before(2)  # further back than the store keeps: refused, not silently reset
    assert SiteState().personal_before(5) is None  # a site that never trained starts from the initial values


def test_a_site_behind_the_servers_count_stops_under_dp_and_goes_on_without(caplog):
    state = a_state()
    state.check_continuity(2, privacy=True)
    with pytest.raises(SiteStateLost, match="counts 3 rounds trained by this site in this run, its state store 2"):
        state.check_continuity(3, privacy=True)
    with caplog.at_level(logging.WARNING):
        state.check_continuity(3, privacy=False)
    assert "goes on from the personal tensors it has" in caplog.text


def train_message(state: dict, server_round: int, state_dir, **config) -> object:
    config = ConfigRecord({"server-round": server_round, RUN_KEY: KEY, SIMULATION_STATE_DIR: str(state_dir), **config})
    return instruction("train", RecordDict({"arrays": ArrayRecord(state), "config": config}), 9)


def a_context(flat: dict) -> Context:
    """What Flower gives a ClientApp that starts afresh: nothing from earlier rounds in memory."""
    return Context(run_id=7, node_id=9, node_config={"partition-id": 0, "num-partitions": 2}, state=RecordDict(),
                   run_config=flat)


def three_rounds(flat: dict, state_dir, restart_each_round: bool) -> list:
    context, state, replies = a_context(flat), trainable_state(new_model(load_config(flat))), []
    shared = {k: v for k, v in state.items() if not k.startswith("net.4")}  # FedPer: the output layer stays
    for server_round in (1, 2, 3):
        if restart_each_round:
            context = a_context(flat)
        reply = client_app.app(train_message(shared, server_round, state_dir), context)
        assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
        replies.append(reply)
        shared = reply.content["arrays"].to_torch_state_dict()
    return replies


def test_a_restarted_site_goes_on_with_its_privacy_account_and_own_layers(tmp_path):
    straight = three_rounds(DP_FEDPER, tmp_path / "a", restart_each_round=False)
    restarted = three_rounds(DP_FEDPER, tmp_path / "b", restart_each_round=True)
    for one, other in zip(straight, restarted, strict=True):
        assert one.content["metrics"]["epsilon"] == other.content["metrics"]["epsilon"]
        sent, again = one.content["arrays"].to_torch_state_dict(), other.content["arrays"].to_torch_state_dict()
        assert all(torch.equal(sent[k], again[k]) for k in sent)
    epsilons = [r.content["metrics"]["epsilon"] for r in restarted]
    assert epsilons[0] < epsilons[1] < epsilons[2]  # one account over the run, not one per process
    kept = SiteStateStore(tmp_path / "b" / "site-0").load(KEY)
    assert kept.trained_rounds == [1, 2, 3] and kept.ledger.epsilon(1e-5) == pytest.approx(epsilons[2])
    assert set(kept.personal[3]) == {"net.4.weight", "net.4.bias"}


def test_a_site_whose_account_is_missing_or_older_refuses_to_train(tmp_path):
    flat, kept = DP_FEDPER, SiteStateStore(tmp_path / "site-0")
    start = {k: v for k, v in trainable_state(new_model(load_config(flat))).items() if not k.startswith("net.4")}
    seen = {TRAINED_SITES: [0, 1], TRAINED_ROUNDS: [2, 2]}  # the server saw site 0 train in rounds 1 and 2
    reply = client_app.app(train_message(start, 3, tmp_path, **seen), a_context(flat))
    assert reply.has_error() and reply.error.code == STATE_LOST
    assert "privacy account is missing or older" in reply.error.reason and str(tmp_path) not in reply.error.reason
    assert not kept.path(KEY).exists()  # no fresh account was started

    older = SiteState(ledger=PrivacyLedger([(1.5, 0.25, 8)]))
    older.trained(1, None)
    kept.save(KEY, older)  # restored from a backup made after round 1
    assert client_app.app(train_message(start, 3, tmp_path, **seen), a_context(flat)).error.code == STATE_LOST
    no_dp = {**flat, "privacy.dp": False}  # own layers lost, no account: it goes on from the initial layer
    assert not client_app.app(train_message(start, 3, tmp_path / "x", **seen), a_context(no_dp)).has_error()

    kept.path(KEY).write_bytes(b"damaged")
    damaged = client_app.app(train_message(start, 3, tmp_path), a_context(flat))
    assert damaged.error.code == STATE_LOST and "unreadable" in damaged.error.reason


def test_where_a_site_keeps_its_state():
    simulated = ConfigRecord({SIMULATION_STATE_DIR: "/runs/run-1/site-state"})
    assert str(state_folder(3, {"partition-id": 3}, simulated)) == "/runs/run-1/site-state/site-3"
    deployed = {NODE_DATA_FILE: "/data/a.npz", NODE_STATE_DIR: "/hospital/omnirad/site-state"}
    assert str(state_folder(3, deployed, simulated)) == "/hospital/omnirad/site-state"  # its own, whatever is sent
    with pytest.raises(ConfigError, match="started without site-state-dir"):
        state_folder(3, {NODE_DATA_FILE: "/data/a.npz"}, ConfigRecord())
    with pytest.raises(ConfigError, match="lack simulation-state-dir"):
        state_folder(3, {"partition-id": 3}, ConfigRecord())


@pytest.mark.usefixtures("task_identity")
def test_the_server_names_the_run_for_good_and_tells_sites_what_it_saw_them_train(tmp_path, start_round):
    cfg = load_config({"run.output-dir": str(tmp_path), "data.num-sites": 2, "strategy.name": "fedper", "model.adapter": "mlp"})
    folder = RunFolder.create(cfg)
    assert RunFolder.reopen(cfg, folder.path, done_rounds=0).run_key == folder.run_key  # a resumed run keeps it
    assert RunFolder.create(cfg).run_key != folder.run_key
    folder.rounds = [{"round": 1, "sites": {"0": {"train": {}}, "1": {"evaluate": {}}}},  # site 1's reply was lost
                     {"round": 2, "sites": {"0": {"train": {}}, "1": {"train": {}}}}]
    messages = start_round(build_strategy(cfg, folder), 3, {"net.0.weight": torch.zeros(2, 2)}, 2)
    for message in messages:
        config = message.content["config"]
        assert (list(config[TRAINED_SITES]), list(config[TRAINED_ROUNDS])) == ([0, 1], [2, 1])
