"""The README's "Extending" recipes work: one registration makes a new strategy, adapter or data
source usable by name everywhere (checks, model building, a site's round). Each test registers
for its own duration only."""

import json

import numpy as np
import pytest
import torch
from flwr.app import Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import MultiKrum
from torch import nn

from omnirad.adapters import ADAPTERS, POOLED, AdapterSpec, trainable_state
from omnirad.config import ConfigError
from omnirad.configure import load_config
from omnirad.data.labelled import LabelledImages
from omnirad.data.sources import DATA_SOURCES, DataSource
from omnirad.models import new_model
from omnirad.site import LocalSite, RoundInputs
from omnirad.site_cache import get_site
from omnirad.tasks import MULTI_CLASS, TaskSpec
from omnirad_fl.client import app as client_app
from omnirad_fl.client.deployment import site_of
from omnirad_fl.client.replies import error_replies
from omnirad_fl.client.site_handlers import SITE_HANDLERS, install
from omnirad_fl.server import app as server_app  # noqa: F401 - the ServerApp's module registers every phase
from omnirad_fl.server.phases import PHASES, Phase, ServerRun, run_phases
from omnirad_fl.server.run_config import load_run_config
from omnirad_fl.server.run_folder import RunFolder
from omnirad_fl.simulations.in_process import InProcessGrid
from omnirad_fl.strategies import STRATEGIES, StrategySpec, build_strategy, flower_strategy
from omnirad_fl.strategies.site_queries import ask_every_site

SMALL = {"data.num-train": 160, "data.num-test": 40, "data.size": 32, "data.num-sites": 2, "data.partition": "iid"}


class CosineHead(nn.Module):
    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        self.prototypes = nn.Parameter(torch.randn(num_classes, in_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return 10 * nn.functional.normalize(features, dim=1) @ nn.functional.normalize(self.prototypes, dim=1).T


class TwoClassArchive(DataSource):
    name = "two-class-archive"

    def task(self, data):
        return TaskSpec(MULTI_CLASS, ("normal", "abnormal"))

    def pool(self, data):
        rng = np.random.default_rng(0)
        labels = rng.integers(0, 2, 120)
        images = (rng.integers(0, 60, (120, 32, 32)) + 150 * labels[:, None, None]).astype(np.uint8)
        return LabelledImages(images, labels)

    def test_set(self, data):
        return self.pool(data).subset(np.arange(30))


def test_a_registered_strategy_is_accepted_by_name_and_built(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="strategy.name"):
        load_run_config({"strategy.name": "multikrum"})
    spec = StrategySpec(MultiKrum, lambda s: {"num_malicious_nodes": s.num_malicious, "num_nodes_to_select": 2})
    monkeypatch.setitem(STRATEGIES._entries, "multikrum", spec)
    cfg = load_run_config({"strategy.name": "multikrum", "run.output-dir": str(tmp_path)})
    strategy = flower_strategy(build_strategy(cfg, RunFolder.create(cfg)))
    assert isinstance(strategy, MultiKrum) and strategy.num_nodes_to_select == 2


def test_a_registered_adapter_trains_at_a_site(monkeypatch):
    spec = AdapterSpec(POOLED, segmentation=False, segmentation_twin="decoder",
                       build=lambda r: CosineHead(r.encoder.num_features, r.task.num_outputs))
    monkeypatch.setitem(ADAPTERS._entries, "cosine", spec)
    cfg = load_config({**SMALL, "model.adapter": "cosine", "train.local-epochs": 1})
    start = trainable_state(new_model(cfg))
    assert set(start) == {"prototypes"}
    state, metrics = LocalSite(cfg, 0).fit(RoundInputs(start, server_round=1))
    assert not torch.equal(state["prototypes"], start["prototypes"]) and np.isfinite(metrics["train-loss"])


def test_a_registered_data_source_feeds_sites_and_the_server(monkeypatch):
    source = TwoClassArchive()
    monkeypatch.setitem(DATA_SOURCES._entries, source.name, source)
    cfg = load_config({**SMALL, "data.dataset": source.name, "model.adapter": "linear"})
    site = LocalSite(cfg, 1)
    assert site.task.label_names == ("normal", "abnormal") and len(site.train_set.labels) > 0
    metrics = site.evaluate(RoundInputs(trainable_state(new_model(cfg)), 0))
    assert 0.0 <= metrics["accuracy"] <= 1.0


def test_a_new_phase_is_one_server_step_and_one_site_handler(tmp_path, monkeypatch, task_identity):
    """A feature that asks every site for something before round 1 and reports it: its server
    phase and its site handler, registered from one place each (here, this test), reach a whole
    run without a line changed in the ServerApp, the ClientApp or the protocol module."""
    def image_count(msg, context):  # the site's side: one scalar, no image
        site = get_site(*site_of(context))
        return Message(RecordDict({"metrics": MetricRecord({"images": len(site.train_set.labels)})}), reply_to=msg)

    def gather_image_counts(run: ServerRun) -> None:  # the server's side, before round 1
        answers = ask_every_site(run.grid, "image_count", "image counts")
        run.summary["images-per-site"] = [int(c["metrics"]["images"]) for c in answers.values()]

    monkeypatch.setitem(SITE_HANDLERS, "query.image_count", image_count)
    monkeypatch.setattr(client_app, "app", install(ClientApp(mods=[error_replies])))
    PHASES.add(Phase("image-counts", "gather", gather_image_counts))
    try:
        flat = {**SMALL, "num-server-rounds": 1, "model.head-init": "random", "run.output-dir": str(tmp_path)}
        grid = InProcessGrid(flat, num_sites=2)
        run = run_phases(ServerRun(grid, load_run_config(flat)))
    finally:
        PHASES.remove("image-counts")
    assert grid.delivered[:2] == ["query.image_count"] * 2  # asked before the first round's messages
    summary = json.loads((run.need_folder().path / "summary.json").read_text())
    assert summary["rounds"] == 1 and sum(summary["images-per-site"]) > 0
    assert "image-counts" not in PHASES.names()
