import pytest

from omnirad.config import ConfigError
from omnirad.configure import load_config
from omnirad.plan import RunPlan
from omnirad_fl.server.core_phases import check_federation
from tests.conftest import FakeGrid


def federated(grid, cfg):
    """The configuration the server's phases read once the federation phase has run."""
    return RunPlan.of(cfg).in_federation(check_federation(grid, cfg)).config


def test_federation_size_must_match_num_sites():
    cfg = load_config({"data.num-sites": 4})
    check_federation(FakeGrid(4), cfg)
    with pytest.raises(ConfigError, match=r"data.num-sites=4 but the federation has 2 SuperNodes.*num-supernodes=4"):
        check_federation(FakeGrid(2), cfg)


def test_an_unset_num_sites_is_the_federations_size():
    cfg = load_config({})
    assert cfg.data.num_sites == 0  # the default: whatever size Flower's federation has
    sized = federated(FakeGrid(10), cfg)  # Flower's own default federation, say
    assert sized.data.num_sites == 10 and sized.strategy.min_sites == 0
    assert cfg.data.num_sites == 0  # learnt by the run's plan, never written into the given configuration
    assert federated(FakeGrid(10), load_config({"data.num-sites": 10})).data.num_sites == 10


def test_keys_that_count_sites_are_checked_against_the_federations_size():
    cfg = load_config({"faults.site": 5, "faults.kind": "crash"})  # fine until the federation is known
    assert federated(FakeGrid(6), cfg).faults.site == 5
    with pytest.raises(ConfigError, match="faults.site.*from 0 to 3"):
        federated(FakeGrid(4), cfg)
    with pytest.raises(ConfigError, match="strategy.min-sites.*to data.num-sites \\(2\\)"):
        federated(FakeGrid(2), load_config({"strategy.min-sites": 3}))


def test_sites_learn_the_federations_size_from_flower():
    from flwr.app import Context, RecordDict

    from omnirad_fl.client.deployment import site_of

    context = Context(run_id=1, node_id=7, node_config={"partition-id": 2, "num-partitions": 5}, state=RecordDict(),
                      run_config={})
    cfg, site_id = site_of(context)
    assert (cfg.data.num_sites, site_id) == (5, 2)
    given = Context(run_id=1, node_id=7, node_config={"partition-id": 2, "num-partitions": 5}, state=RecordDict(),
                    run_config={"data.num-sites": 3})  # the server refuses this clash before any message
    assert site_of(given)[0].data.num_sites == 3


def test_the_data_is_not_split_before_the_federations_size_is_known():
    from omnirad.data.sites import load_site, site_partitions

    with pytest.raises(ConfigError, match="data.num-sites=0 \\(the federation's size\\) is known only inside"):
        site_partitions(load_config({}).data, seed=0)
    with pytest.raises(ConfigError, match="data.num-sites=0"):
        load_site(load_config({"data.dataset": "files", "data.site-files": "a.npz,b.npz", "data.num-classes": 2}).data, 0, seed=0)


def test_the_projects_own_tools_start_four_sites_when_num_sites_is_unset():
    from omnirad_fl.simulations.demo import simulation_config
    from omnirad_fl.simulations.flower_local import DEFAULT_NUM_SUPERNODES

    assert simulation_config({}).data.num_sites == DEFAULT_NUM_SUPERNODES == 4
    assert simulation_config({"data.num-sites": 7}).data.num_sites == 7
