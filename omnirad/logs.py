"""Progress messages of the library (encoding, weights) and of the apps, shown by the apps, and
where Flower's own log goes: a file the simulation tools name, off the terminal unless verbose."""

from __future__ import annotations

import logging
import os
import sys
import warnings

# Logger name -> format: the library's messages are marked as such; the apps' are what users read.
FORMATS = {"omnirad": "omnirad: %(message)s", "omnirad_fl": "%(message)s"}
VERBOSE_ENV = "OMNIRAD_VERBOSE"  # 1: Flower's and Ray's full output on the terminal
FLOWER_LOG_ENV = "OMNIRAD_FLOWER_LOG"  # the file Flower's log goes to (set by the simulation tools)
FLOWER_LOG_FORMAT = "%(levelname)s %(asctime)s %(process)d | %(filename)s:%(lineno)d | %(message)s"
# MONAI's pydicom plugin warns on every volume it reads on a machine without nvImageCodec.
ONCE_PER_PROCESS = ("monai.data.nvimgcodec_pydicom_plugin",)


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a message comes: a notebook, a test or a CLI
    wrapper may replace it after the handler was made."""

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


class Once(logging.Filter):
    """Lets each distinct message of a logger through once: a warning about the machine says
    nothing new the second time."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


def verbose() -> bool:
    """Whether ``OMNIRAD_VERBOSE`` asks for Flower's and Ray's full output on the terminal."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def show_progress(level: int = logging.INFO) -> None:
    """Print the ``omnirad`` and ``omnirad_fl`` loggers' messages to stderr and route Flower's log;
    the library itself configures nothing (a notebook decides what it shows)."""
    for name, form in FORMATS.items():
        logger = logging.getLogger(name)
        if not logger.handlers:
            handler = StderrHandler()
            handler.setFormatter(logging.Formatter(form))
            logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False  # Flower's handlers on the root logger would print every message twice
    for name in ONCE_PER_PROCESS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, Once) for f in logger.filters):
            logger.addFilter(Once())
    route_flower_log()


def route_flower_log() -> None:
    """Flower's records reach the terminal once, and with ``OMNIRAD_FLOWER_LOG`` set they all go to
    that file and only warnings to the terminal (unless ``OMNIRAD_VERBOSE``): a terminal that shows
    everything hides the round table, a file that keeps everything loses nothing."""
    flwr = logging.getLogger("flwr")  # by name: the library imports no Flower
    # opacus calls logging.basicConfig() on import: through the root logger every Flower record,
    # DEBUG included, was printed a second time with a timestamp.
    flwr.propagate = False
    path = os.environ.get(FLOWER_LOG_ENV)
    if not path:
        return
    target = os.path.abspath(path)
    if not any(isinstance(h, logging.FileHandler) and h.baseFilename == target for h in flwr.handlers):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        handler = logging.FileHandler(target, encoding="utf-8")
        handler.setLevel(logging.DEBUG)
        handler.setFormatter(logging.Formatter(FLOWER_LOG_FORMAT))
        flwr.addHandler(handler)
    if not verbose():
        for console in flwr.handlers:  # Flower's own console handler, the file one excepted
            if isinstance(console, logging.StreamHandler) and not isinstance(console, logging.FileHandler):
                console.setLevel(logging.WARNING)
        # Ray's advice to its own users about a future default; this project relies on today's
        # (a CPU-only site sees no GPU). A warnings filter is the only switch short of that env var.
        warnings.filterwarnings("ignore", message="Tip: In future versions of Ray", category=FutureWarning)
