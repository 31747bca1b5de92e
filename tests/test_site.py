"""One site's local work without Flower: what a notebook or a hospital's ClientApp calls."""

from omnirad.adapters import trainable_state
from omnirad.config import load_config
from omnirad.site import CentralEvaluator, get_site, new_model

CFG = load_config({"data.num-train": 400, "data.num-test": 100, "data.size": 32, "data.num-sites": 2,
                   "data.partition": "iid", "train.local-epochs": 3})


def test_fit_returns_exactly_the_adapter_tensors_and_learns():
    site = get_site(CFG, 0)
    assert get_site(CFG, 0) is site  # features are encoded once per process
    start = trainable_state(new_model(CFG))
    state, metrics = site.fit(start, server_round=1)
    assert list(state) == list(start)
    assert {"num-examples", "site-id", "train-loss", "peak-rss-mb"} == set(metrics)
    before, after = site.evaluate(start), site.evaluate(state)
    assert {"accuracy", "macro-f1", "auc", "loss", "num-examples"} <= set(after)
    assert after["loss"] < before["loss"]
    central = CentralEvaluator(CFG)(state)
    assert 0.0 <= central["accuracy"] <= 1.0 and "macro-f1" in central


def test_a_round_of_a_site_is_reproducible():
    import torch

    site = get_site(CFG, 1)
    start = trainable_state(new_model(CFG))
    first, _ = site.fit(start, server_round=3)
    torch.rand(5)  # whatever else used the global RNG in between
    second, _ = site.fit(start, server_round=3)
    assert all(torch.equal(first[k], second[k]) for k in first)
