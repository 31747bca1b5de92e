"""The run plan: the given configuration is never rewritten; what a run learns is a field of a new
plan, checked where it is learnt."""

import dataclasses

import pytest

from omnirad.config import ConfigError
from omnirad.configure import load_config
from omnirad.plan import RunPlan, SiteSettings


def test_a_plan_that_learnt_nothing_reads_the_given_configuration():
    given = load_config({"data.num-sites": 3})
    plan = RunPlan.of(given)
    assert plan.config is given and plan.in_federation(5) is plan  # a given size is the size


def test_learnt_values_are_fields_of_new_plans_and_the_given_configuration_stays_as_written(tmp_path):
    given = load_config({})
    plan = RunPlan.of(given).in_federation(4).with_encoder(str(tmp_path / "ssl.safetensors"))
    assert (plan.num_sites, plan.encoder_weights) == (4, str(tmp_path / "ssl.safetensors"))
    assert (plan.config.data.num_sites, plan.config.model.weights) == (4, str(tmp_path / "ssl.safetensors"))
    assert (given.data.num_sites, given.model.weights) == (0, "") and plan.given is given
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.num_sites = 5  # type: ignore[misc]


def test_a_learnt_value_that_breaks_a_rule_fails_where_it_is_learnt_naming_the_key():
    plan = RunPlan.of(load_config({"strategy.min-sites": 3}))
    with pytest.raises(ConfigError, match="strategy.min-sites"):
        plan.in_federation(2)
    faults = RunPlan.of(load_config({"faults.site": 5, "faults.kind": "crash"}))
    assert faults.in_federation(6).config.faults.site == 5
    with pytest.raises(ConfigError, match="faults.site"):
        faults.in_federation(4)


def test_a_deployed_site_runs_the_plan_with_its_own_paths_and_device(tmp_path):
    plan = RunPlan.of(load_config({"data.dataset": "deployment", "data.num-sites": 2, "data.num-classes": 3,
                                      "run.device": "cuda:0"}))
    site = SiteSettings(data_file=str(tmp_path / "a.npz"), encoder_weights=str(tmp_path / "w.safetensors"),
                        cache_dir=str(tmp_path / "cache"), device="cpu", precision="fp32")
    cfg = plan.at_site(site).config
    assert (cfg.data.site_files, cfg.model.weights, cfg.model.cache_dir) == (site.data_file, site.encoder_weights,
                                                                              site.cache_dir)
    assert (cfg.run.device, cfg.run.precision) == ("cpu", "fp32")  # the site's own, never the server's
    assert plan.given.run.device == "cuda:0"
