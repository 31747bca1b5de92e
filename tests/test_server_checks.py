import pytest

from omnirad.config import ConfigError, load_config
from omnirad_fl.server.app import check_federation
from tests.conftest import FakeGrid


def test_federation_size_must_match_num_sites():
    cfg = load_config({"data.num-sites": 4})
    check_federation(FakeGrid(4), cfg)
    with pytest.raises(ConfigError, match=r"data.num-sites=4 but the federation has 2 SuperNodes.*num-supernodes=4"):
        check_federation(FakeGrid(2), cfg)
