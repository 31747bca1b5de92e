"""Feature standardisation pooled over sites: exact pooling, the head that reads it, the server's
query, and the configuration checks."""

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from omnirad.adapters import trainable_state
from omnirad.broadcast import Broadcast
from omnirad.config import ConfigError
from omnirad.configure import load_config
from omnirad.models import new_model
from omnirad.site_cache import get_site
from omnirad.standardise import FeatureMoments, Standardisation, StandardisedHead
from omnirad_fl.strategies.site_queries import collect_standardisation
from tests.conftest import QueryGrid


def test_pooled_moments_give_the_mean_and_std_of_all_sites_features_together():
    torch.manual_seed(0)
    sites = [torch.randn(n, 6) * scale + shift for n, scale, shift in ((50, 1.0, 3.0), (7, 4.0, -2.0), (120, 0.5, 10.0))]
    pooled = FeatureMoments.of(sites[0]) + FeatureMoments.of(sites[1]) + FeatureMoments.of(sites[2])
    result = Standardisation.from_moments(pooled)
    everything = torch.cat(sites)
    assert pooled.count == 177
    assert torch.allclose(result.mean, everything.mean(0), atol=1e-5)
    assert torch.allclose(result.std, everything.std(0, unbiased=False), atol=1e-5)


def test_a_constant_feature_is_centred_not_divided_by_zero():
    features = torch.cat([torch.randn(10, 2), torch.full((10, 1), 5.0)], dim=1)
    result = Standardisation.from_moments(FeatureMoments.of(features))
    assert result.std[2] > 0 and torch.isfinite((features - result.mean) / result.std).all()


def test_malformed_moments_are_refused_naming_their_source():
    good = FeatureMoments.of(torch.randn(4, 3)).to_arrays()
    with pytest.raises(ValueError, match="node 7.*expected count, total and squares"):
        FeatureMoments.from_arrays({"count": good["count"]}, "node 7")
    with pytest.raises(ValueError, match="node 7.*not finite"):
        FeatureMoments.from_arrays({**good, "total": torch.full((3,), float("nan"), dtype=torch.float64)}, "node 7")
    with pytest.raises(ValueError, match="node 7"):
        FeatureMoments.from_arrays({**good, "squares": torch.zeros(4, dtype=torch.float64)}, "node 7")
    with pytest.raises(ValueError, match="3 and 5 dimensions"):
        FeatureMoments.of(torch.randn(2, 3)) + FeatureMoments.of(torch.randn(2, 5))


def test_the_head_reads_standardised_features_and_sends_only_its_trainable_tensors():
    cfg = load_config({"data.size": 32, "model.adapter": "linear", "model.standardise-features": True})
    model = new_model(cfg)
    assert isinstance(model, StandardisedHead)
    features = torch.randn(5, 192) * 3 + 7
    with pytest.raises(RuntimeError, match="no feature statistics yet"):
        model(features)
    stats = Standardisation(features.mean(0), features.std(0))
    model = new_model(cfg, Broadcast(standardisation=stats))
    expected = model.head((features - stats.mean) / stats.std)
    assert torch.allclose(model(features), expected)
    assert set(trainable_state(model)) == {"head.fc.weight", "head.fc.bias"}  # the statistics never travel
    with pytest.raises(ValueError, match="3 dimensions for a head reading 192"):
        model.set_standardisation(Standardisation(torch.zeros(3), torch.ones(3)))


def test_the_standardisation_survives_a_flower_config_record_with_the_bank():
    stats = Standardisation(torch.randn(8), torch.rand(8) + 0.1)
    bank = torch.randn(3, 4)
    back = Broadcast.from_config(dict(ConfigRecord(Broadcast(bank, stats).to_config())))
    assert torch.equal(back.bank, bank)
    assert torch.equal(back.standardisation.mean, stats.mean) and torch.equal(back.standardisation.std, stats.std)
    assert Broadcast.from_config({}) == Broadcast()


def moments_grid(answers: dict[int, torch.Tensor | None]) -> QueryGrid:
    """Sites that answer the feature-moments query with these features' moments (None: an error)."""
    return QueryGrid("feature_moments", {
        node: None if f is None else RecordDict({"arrays": ArrayRecord(FeatureMoments.of(f).to_arrays())})
        for node, f in answers.items()})


@pytest.mark.usefixtures("task_identity")
def test_the_server_pools_every_sites_moments_and_names_a_site_that_fails():
    a, b = torch.randn(30, 4) + 1, torch.randn(10, 4) * 2
    stats, images = collect_standardisation(moments_grid({1: a, 2: b}))
    assert images == 40 and torch.allclose(stats.mean, torch.cat([a, b]).mean(0), atol=1e-5)
    with pytest.raises(RuntimeError, match="feature standardisation: node 2 did not answer.*site crashed"):
        collect_standardisation(moments_grid({1: a, 2: None}))
    with pytest.raises(RuntimeError, match="node 2.*4 and 2 dimensions"):
        collect_standardisation(moments_grid({1: a, 2: torch.randn(5, 2)}))


@pytest.mark.parametrize("setting, named", [
    ({"data.task": "segmentation", "model.adapter": "decoder"}, "model.adapter"),
    ({"model.adapter": "lora"}, "model.adapter"),
    ({"strategy.name": "spectral"}, "strategy.name"),
    ({"privacy.dp": True}, "privacy.dp"),
    ({"multitask.site-tasks": "region,region,lesions,lesions"}, "multitask.site-tasks"),
])
def test_settings_it_does_not_support_are_refused_by_name(setting, named):
    with pytest.raises(ConfigError, match=named):
        load_config({"model.standardise-features": True, **setting})


def test_pooled_and_local_only_references_standardise_as_the_federation_would():
    from omnirad_fl.simulations.references import local_only, pooled, standardised_by

    cfg = load_config({"data.size": 32, "data.num-sites": 2, "data.num-train": 120, "data.num-test": 40,
                       "model.adapter": "linear", "model.standardise-features": True, "num-server-rounds": 1,
                       "train.local-epochs": 1})
    sites = [get_site(cfg, 0), get_site(cfg, 1)]
    together = standardised_by(cfg.model, sites).standardisation
    features = torch.cat([s.train_set.inputs for s in sites])
    assert torch.allclose(together.mean, features.mean(0), atol=1e-4)
    assert not torch.allclose(standardised_by(cfg.model, sites[:1]).standardisation.mean, together.mean)
    for reference in (pooled(cfg), local_only(cfg)):
        assert 0.0 <= reference["global"]["macro-f1"] <= 1.0
    assert standardised_by(load_config({"data.size": 32}).model, sites) is None
