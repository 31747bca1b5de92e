"""``data.num-sites`` left at 0: the federation's size, known once the federation is.

Flower decides how many simulated SuperNodes there are (``num-supernodes``) and tells every node
(``num-partitions``) and the server (its connected nodes). A run that does not set
``data.num-sites`` takes that number, so ``flwr run .`` works whatever size Flower's federation
has; one that sets it must match (the server says so before anything starts). Everything that
splits data or counts sites needs the number: the run's plan learns it (``omnirad.plan``).
"""

from __future__ import annotations

from omnirad.config.schema import DataConfig
from omnirad.errors import ConfigError

FEDERATION_SIZE = 0  # data.num-sites' default: the federation's size


def require_num_sites(data: DataConfig) -> int:
    """``data.num-sites``, or ``ConfigError`` while it still waits for the federation's size."""
    if data.num_sites == FEDERATION_SIZE:
        raise ConfigError("data.num-sites=0 (the federation's size) is known only inside a federation: set "
                          "data.num-sites to split the data or name sites outside one")
    return data.num_sites
