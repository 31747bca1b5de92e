"""One site's local work without Flower: what a notebook or a hospital's ClientApp calls."""

from omnirad.adapters import trainable_state
from omnirad.config import to_flat, to_yaml
from omnirad.configure import load_config
from omnirad.evaluation import CentralEvaluator
from omnirad.models import new_model
from omnirad.site import RoundInputs
from omnirad.site_cache import get_site

CFG = load_config({"data.num-train": 400, "data.num-test": 100, "data.size": 32, "data.num-sites": 2,
                   "data.partition": "iid", "train.local-epochs": 3})


def test_fit_returns_exactly_the_adapter_tensors_and_learns():
    site = get_site(CFG, 0)
    assert get_site(CFG, 0) is site  # features are encoded once per process
    start = trainable_state(new_model(CFG))
    state, metrics = site.fit(RoundInputs(start, server_round=1))
    assert list(state) == list(start)
    assert {"num-examples", "site-id", "train-loss", "peak-rss-mb"} == set(metrics)
    before, after = site.evaluate(RoundInputs(start, 0)), site.evaluate(RoundInputs(state, 0))
    assert {"accuracy", "macro-f1", "auc", "loss", "num-examples"} <= set(after)
    assert after["loss"] < before["loss"]
    central = CentralEvaluator(CFG)(state)
    assert 0.0 <= central["accuracy"] <= 1.0 and "macro-f1" in central


def test_a_round_of_a_site_is_reproducible():
    import torch

    site = get_site(CFG, 1)
    start = trainable_state(new_model(CFG))
    first, _ = site.fit(RoundInputs(start, server_round=3))
    torch.rand(5)  # whatever else used the global RNG in between
    second, _ = site.fit(RoundInputs(start, server_round=3))
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_a_worker_keeps_its_sites_until_they_hold_too_much(monkeypatch):
    from omnirad import site_cache as site_module
    from omnirad.data.sites import site_partitions

    cfg = load_config({"data.num-sites": 3, "data.num-train": 120, "data.num-test": 20, "data.size": 32,
                       "data.min-site-samples": 5, "run.seed": 7})
    again = load_config({**to_flat(cfg)})
    assert site_partitions(cfg.data, seed=7) is site_partitions(again.data, seed=again.run.seed)  # split once per process
    first, second = get_site(cfg, 0), get_site(cfg, 1)
    assert get_site(cfg, 0) is first  # site 0 is now the most recently used
    held = site_module._held_bytes(first) + site_module._held_bytes(second)
    monkeypatch.setattr(site_module, "_SITE_CACHE_BYTES", held - 1)  # one of the two must go
    get_site(cfg, 2)
    assert (to_yaml(cfg), 1) not in site_module._SITES  # the least recently used
    assert get_site(cfg, 0) is first
