"""Progress messages of the library (encoding, weights), shown by the apps that run it."""

from __future__ import annotations

import logging
import sys


def show_progress(level: int = logging.INFO) -> None:
    """Print the ``omnirad`` loggers' messages to stderr; the library itself configures nothing."""
    logger = logging.getLogger("omnirad")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("omnirad: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level)
