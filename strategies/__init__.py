"""Server-side aggregation: Flower's strategy classes, chosen by configuration and observed."""

from strategies.factory import build_strategy
from strategies.observed import RoundObserver

__all__ = ["RoundObserver", "build_strategy"]
