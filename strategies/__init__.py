"""Server-side aggregation: Flower's strategy classes by name, wrapped, observed and validated.

Importing this package registers every strategy (``STRATEGIES``).
"""

from omnirad_fl.strategies import flower, spectral_bank  # noqa: F401 - each module registers its strategies
from omnirad_fl.strategies.factory import build_strategy
from omnirad_fl.strategies.registry import STRATEGIES, StrategySpec, check_strategy
from omnirad_fl.strategies.wrapper import OmniRadStrategy, RoundObserver, flower_strategy

__all__ = ["STRATEGIES", "OmniRadStrategy", "RoundObserver", "StrategySpec", "build_strategy", "check_strategy",
           "flower_strategy"]
