"""The README's "Extending" recipes work: one registration makes a new strategy, adapter or data
source usable by name everywhere (checks, model building, a site's round). Each test registers
for its own duration only."""

import numpy as np
import pytest
import torch
from flwr.serverapp.strategy import MultiKrum
from torch import nn

from omnirad.adapters import ADAPTERS, POOLED, AdapterSpec, trainable_state
from omnirad.config import ConfigError
from omnirad.configure import load_config
from omnirad.data.labelled import LabelledImages
from omnirad.data.sources import DATA_SOURCES, DataSource
from omnirad.models import new_model
from omnirad.site import LocalSite, RoundInputs
from omnirad.tasks import MULTI_CLASS, TaskSpec
from omnirad_fl.server.run_config import load_run_config
from omnirad_fl.server.run_folder import RunFolder
from omnirad_fl.strategies import STRATEGIES, StrategySpec, build_strategy, flower_strategy

SMALL = {"data.num-train": 160, "data.num-test": 40, "data.size": 32, "data.num-sites": 2, "data.partition": "iid"}


class CosineHead(nn.Module):
    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        self.prototypes = nn.Parameter(torch.randn(num_classes, in_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return 10 * nn.functional.normalize(features, dim=1) @ nn.functional.normalize(self.prototypes, dim=1).T


class TwoClassArchive(DataSource):
    name = "two-class-archive"

    def task(self, cfg):
        return TaskSpec(MULTI_CLASS, ("normal", "abnormal"))

    def pool(self, cfg):
        rng = np.random.default_rng(0)
        labels = rng.integers(0, 2, 120)
        images = (rng.integers(0, 60, (120, 32, 32)) + 150 * labels[:, None, None]).astype(np.uint8)
        return LabelledImages(images, labels)

    def test_set(self, cfg):
        return self.pool(cfg).subset(np.arange(30))


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
