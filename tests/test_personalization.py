"""FedPer and FedBN: which tensors stay at a site, and that they stay there across rounds."""


import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict

from omnirad.adapters import trainable_state
from omnirad.config import ConfigError
from omnirad.configure import load_config
from omnirad.evaluation import CentralEvaluator
from omnirad.models import new_model
from omnirad.personalization import local_keys
from omnirad.protocol import SIMULATION_STATE_DIR
from omnirad.site import RoundInputs
from omnirad.site_cache import get_site
from omnirad.site_state import SiteStateStore
from omnirad_fl.client import app as client_app
from omnirad_fl.simulations.flower_local import instruction

SMALL = {"data.num-train": 240, "data.num-test": 60, "data.size": 32, "data.num-sites": 2,
         "data.partition": "iid", "train.local-epochs": 2, "num-server-rounds": 2}


def model_for(adapter: str, task: str = "multi-class"):
    cfg = load_config({**SMALL, "model.adapter": adapter, "data.task": task, "model.lora-rank": 2})
    return new_model(cfg)


@pytest.mark.parametrize(
    ("adapter", "task", "mode", "expected"),
    [
        ("mlp", "multi-class", "fedper", {"net.4.weight", "net.4.bias"}),
        ("mlp", "multi-class", "fedbn", {"net.0.weight", "net.0.bias"}),
        ("lora", "multi-class", "fedper", {"head.fc.weight", "head.fc.bias"}),
        ("decoder", "segmentation", "fedper", {"classify.weight", "classify.bias"}),
    ],
)
def test_local_keys_are_the_output_layer_or_the_norms(adapter, task, mode, expected):
    assert local_keys(model_for(adapter, task), mode, adapter) == expected


def test_fedbn_on_the_decoder_keeps_every_groupnorm_local():
    model = model_for("decoder", "segmentation")
    keys = local_keys(model, "fedbn", "decoder")
    norms = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(keys) == 2 * len(norms) > 0 and all(".1." in k for k in keys)  # (conv, norm, act) blocks


@pytest.mark.parametrize(("adapter", "mode", "words"), [
    ("linear", "fedper", "nothing would be federated"),
    ("linear", "fedbn", "no trainable normalisation layer"),
    ("lora", "fedbn", "no trainable normalisation layer"),
])
def test_a_mode_that_leaves_nothing_to_share_or_keep_is_refused(adapter, mode, words):
    with pytest.raises(ConfigError, match=words):
        local_keys(model_for(adapter), mode, adapter)


def test_bad_mode_and_finetune_epochs_name_the_key():
    with pytest.raises(ConfigError, match="personalization.mode"):
        load_config({"personalization.mode": "ditto"})
    with pytest.raises(ConfigError, match="personalization.finetune-epochs"):
        load_config({"personalization.finetune-epochs": -1})


def test_strategy_name_fedper_is_fedavg_with_personalization():
    cfg = load_config({"strategy.name": "fedbn"})
    assert (cfg.strategy.name, cfg.personalization.mode) == ("fedavg", "fedbn")
    cfg = load_config({"strategy.name": "fedprox", "personalization.mode": "fedper"})
    assert (cfg.strategy.name, cfg.personalization.mode) == ("fedprox", "fedper")
    with pytest.raises(ConfigError, match="contradicts personalization.mode"):
        load_config({"strategy.name": "fedper", "personalization.mode": "fedbn"})


def test_fedper_keeps_the_output_layer_at_the_site_across_rounds(tmp_path):
    flat = {**SMALL, "personalization.mode": "fedper", "model.adapter": "mlp"}
    cfg = load_config(flat)
    site = get_site(cfg, 0)
    initial = trainable_state(new_model(cfg))
    shared = {k: v for k, v in initial.items() if k not in site.local_keys}
    context = Context(run_id=1, node_id=7, node_config={"partition-id": 0, "num-partitions": 2},
                      state=RecordDict(), run_config=flat)

    stored = []
    for server_round in (1, 2):
        config = ConfigRecord({"server-round": server_round, SIMULATION_STATE_DIR: str(tmp_path)})
        content = RecordDict({"arrays": ArrayRecord(shared), "config": config})
        reply = client_app.app(instruction("train", content, 7), context)
        sent = reply.content["arrays"].to_torch_state_dict()
        assert set(sent) == set(shared)  # the output layer never leaves the site
        stored.append(SiteStateStore(tmp_path / "site-0").load("flower-run-1").personal[server_round])
        assert set(stored[-1]) == site.local_keys
        shared = sent
    # round 2 trained on from round 1's local layer, not from the initial one
    assert not torch.equal(stored[0]["net.4.weight"], initial["net.4.weight"])
    assert not torch.equal(stored[1]["net.4.weight"], stored[0]["net.4.weight"])

    config = ConfigRecord({"server-round": 2, SIMULATION_STATE_DIR: str(tmp_path)})
    content = RecordDict({"arrays": ArrayRecord(shared), "config": config})
    personal = client_app.app(instruction("evaluate", content, 7), context).content["metrics"]
    elsewhere = ConfigRecord({"server-round": 2, SIMULATION_STATE_DIR: str(tmp_path / "elsewhere")})
    untrained_head = client_app.app(instruction("evaluate", RecordDict({"arrays": ArrayRecord(shared),
                                                                             "config": elsewhere}), 7),
                                         context).content["metrics"]
    # the site scores its own layer, not the initial one
    assert personal["loss"] == pytest.approx(site.evaluate(RoundInputs(shared, 0, personal=stored[-1]))["loss"])
    assert personal["loss"] != pytest.approx(untrained_head["loss"])
    assert CentralEvaluator(cfg)(shared) == {}  # no global output layer to score on the server


def test_local_finetuning_baseline_reports_finetuned_metrics_after_the_last_round():
    cfg = load_config({**SMALL, "personalization.finetune-epochs": 3})
    site = get_site(cfg, 1)
    start = trainable_state(new_model(cfg))
    metrics = site.evaluate(RoundInputs(start, 0), finetune_epochs=3)
    assert {"finetuned-accuracy", "finetuned-macro-f1", "finetuned-auc"} <= set(metrics)
    assert "finetuned-loss" not in metrics
    assert metrics["finetuned-accuracy"] != metrics["accuracy"] or metrics["finetuned-auc"] != metrics["auc"]
    assert "finetuned-accuracy" not in site.evaluate(RoundInputs(start, 0))
