"""DP-SGD with one account per site over the whole run: epsilon accumulates, and the budget stops training."""

import time
from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, Metadata, RecordDict
from opacus.accountants import RDPAccountant

from omnirad.adapters import trainable_state
from omnirad.config import ConfigError
from omnirad.configure import load_config
from omnirad.models import new_model
from omnirad.privacy import PrivacyBudgetSpent, PrivacyLedger, check_budget, round_plan
from omnirad.protocol import SIMULATION_STATE_DIR
from omnirad.site import RoundInputs
from omnirad.site_cache import get_site
from omnirad.site_state import SiteStateStore
from omnirad_fl.client import app as client_app
from omnirad_fl.server.run_config import load_run_config

DP = {"data.num-train": 400, "data.num-test": 40, "data.size": 32, "data.num-sites": 2, "data.partition": "iid",
      "train.local-epochs": 1, "num-server-rounds": 3, "privacy.dp": True}


def train_message(state: dict, server_round: int, state_dir: Path) -> Message:
    metadata = Metadata(run_id=1, message_id=f"train-{server_round}", src_node_id=0, dst_node_id=9,
                        reply_to_message_id="", group_id="1", created_at=time.time(), ttl=3600.0, message_type="train")
    config = ConfigRecord({"server-round": server_round, SIMULATION_STATE_DIR: str(state_dir)})
    return Message(metadata=metadata, content=RecordDict({"arrays": ArrayRecord(state), "config": config}))


def rounds_of(flat: dict, count: int, output: Path) -> tuple[list[Message], PrivacyLedger]:
    """``count`` training rounds of site 0 through its ClientApp; its ledger as its state store keeps it."""
    context = Context(run_id=1, node_id=9, node_config={"partition-id": 0, "num-partitions": 2},
                      state=RecordDict(), run_config=flat)
    state = trainable_state(new_model(load_config(flat)))
    replies = []
    for server_round in range(1, count + 1):
        reply = client_app.app(train_message(state, server_round, output), context)
        replies.append(reply)
        if not reply.has_error():
            state = reply.content["arrays"].to_torch_state_dict()
    return replies, SiteStateStore(output / "site-0").load("flower-run-1").ledger


def test_epsilon_accumulates_over_rounds_and_stays_within_the_budget(tmp_path):
    replies, ledger = rounds_of({**DP, "privacy.epsilon": 3.0}, 3, tmp_path)
    epsilons = [r.content["metrics"]["epsilon"] for r in replies]
    assert epsilons[0] < epsilons[1] < epsilons[2] <= 3.0 * 1.01  # cumulative, not per round
    assert epsilons[2] > 2.5  # the derived noise spends (nearly) the whole budget over the planned rounds

    cfg = load_config({**DP, "privacy.epsilon": 3.0})
    plan = round_plan(cfg, len(get_site(cfg, 0).train_set.labels))
    accountant = RDPAccountant()  # opacus' own accountant, told the three rounds afresh
    accountant.history = [(plan.noise_multiplier, plan.sample_rate, 3 * plan.steps)]
    assert epsilons[2] == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-6)
    assert ledger.epsilon(1e-5) == pytest.approx(epsilons[2])


def test_a_site_whose_budget_is_spent_stops_training_and_says_so(tmp_path):
    flat = {**DP, "privacy.epsilon": 2.0, "privacy.noise-multiplier": 2.0}  # about 1.3, 1.7, 2.0, 2.2 after rounds 1-4
    replies, ledger = rounds_of(flat, 4, tmp_path)
    errors = [r for r in replies if r.has_error()]
    assert errors and not replies[0].has_error()
    first_refused = replies.index(errors[0])
    assert first_refused == 3  # rounds 1-3 fit the budget of 2.0, round 4 would not
    assert all(r.has_error() for r in replies[first_refused:])  # once spent, always spent
    assert "privacy budget spent" in errors[0].error.reason and "privacy.epsilon=2" in errors[0].error.reason
    spent = ledger.epsilon(1e-5)
    assert spent <= 2.0 * 1.01 and spent == pytest.approx(replies[first_refused - 1].content["metrics"]["epsilon"])


def test_dp_training_moves_the_adapter_and_differs_from_plain_training():
    cfg = load_config({**DP, "privacy.noise-multiplier": 1.0})
    site = get_site(cfg, 1)
    start = trainable_state(new_model(cfg))
    private, metrics = site.fit(RoundInputs(start, 1), ledger=PrivacyLedger())
    plain, _ = get_site(load_config({**DP, "privacy.dp": False}), 1).fit(RoundInputs(start, 1))
    assert metrics["noise-multiplier"] == 1.0 and metrics["epsilon"] > 0
    assert any(not torch.equal(private[k], start[k]) for k in start)
    assert any(not torch.allclose(private[k], plain[k]) for k in start)
    ledger = PrivacyLedger()
    with pytest.raises(PrivacyBudgetSpent):
        check_budget(ledger, round_plan(load_config({**DP, "privacy.noise-multiplier": 0.3, "privacy.epsilon": 0.1}), 200),
                     load_config({**DP, "privacy.epsilon": 0.1}).privacy)


def test_dp_refuses_a_proximal_term_and_bad_values():
    with pytest.raises(ConfigError, match="strategy.name"):
        load_run_config({"privacy.dp": True, "strategy.name": "fedprox"})
    for key, value in (("privacy.epsilon", 0.0), ("privacy.delta", 1.0), ("privacy.max-grad-norm", 0.0)):
        with pytest.raises(ConfigError, match=key):
            load_config({key: value})
