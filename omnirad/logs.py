"""Progress messages of the library (encoding, weights) and of the apps, shown by the apps."""

from __future__ import annotations

import logging
import sys

# Logger name -> format: the library's messages are marked as such; the apps' are what users read.
FORMATS = {"omnirad": "omnirad: %(message)s", "omnirad_fl": "%(message)s"}


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a message comes: a notebook, a test or a CLI
    wrapper may replace it after the handler was made."""

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def show_progress(level: int = logging.INFO) -> None:
    """Print the ``omnirad`` and ``omnirad_fl`` loggers' messages to stderr; the library itself
    configures nothing (a notebook decides what it shows)."""
    for name, form in FORMATS.items():
        logger = logging.getLogger(name)
        if not logger.handlers:
            handler = StderrHandler()
            handler.setFormatter(logging.Formatter(form))
            logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False  # Flower's handlers on the root logger would print every message twice
