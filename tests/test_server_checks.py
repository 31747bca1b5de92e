import pytest

from omnirad.config import ConfigError, load_config
from server.app import check_federation


class FakeGrid:
    def __init__(self, num_nodes: int) -> None:
        self.num_nodes = num_nodes

    def get_node_ids(self):
        return list(range(100, 100 + self.num_nodes))


def test_federation_size_must_match_num_sites():
    cfg = load_config({"data.num-sites": 4})
    check_federation(FakeGrid(4), cfg)
    with pytest.raises(ConfigError, match=r"data.num-sites=4 but the federation has 2 SuperNodes.*num-supernodes=4"):
        check_federation(FakeGrid(2), cfg)
