"""The apps' logging: Flower's log in a file and off the terminal by default, on it when verbose,
never twice, and a machine warning from MONAI once per process."""

import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from flwr.common.logger import console_handler

from omnirad.logs import FLOWER_LOG_ENV, VERBOSE_ENV, Once, show_progress
from omnirad_fl.simulations.flower_local import flower_env, flower_log

NVIMGCODEC = "monai.data.nvimgcodec_pydicom_plugin"


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[io.StringIO]:
    """Flower's console as a string; the logging set-up show_progress changes, restored after."""
    flwr = logging.getLogger("flwr")
    saved = (list(flwr.handlers), flwr.propagate, console_handler.level, console_handler.stream)
    nvimgcodec = logging.getLogger(NVIMGCODEC)
    saved_filters = list(nvimgcodec.filters)
    for f in saved_filters:
        nvimgcodec.removeFilter(f)  # another test's show_progress may have seen the message already
    monkeypatch.setenv(FLOWER_LOG_ENV, str(tmp_path / "flower.log"))
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    stream = io.StringIO()
    console_handler.setStream(stream)
    with warnings.catch_warnings():
        yield stream
    for handler in flwr.handlers:
        if handler not in saved[0]:
            flwr.removeHandler(handler)
            handler.close()
    flwr.propagate = saved[1]
    console_handler.setLevel(saved[2])
    console_handler.setStream(saved[3])
    nvimgcodec.filters[:] = saved_filters


def flower_says(level: int, message: str) -> None:
    logging.getLogger("flwr").log(level, message)


def test_flower_info_goes_to_the_file_and_not_the_terminal_by_default(terminal, tmp_path):
    show_progress()
    flower_says(logging.INFO, "configure_train: Sampled 4 nodes")
    flower_says(logging.WARNING, "a Flower warning")
    flower_says(logging.DEBUG, "a Flower debug line")
    kept = (tmp_path / "flower.log").read_text()
    assert "configure_train: Sampled 4 nodes" in kept and "a Flower debug line" in kept
    assert "Sampled" not in terminal.getvalue() and "debug" not in terminal.getvalue()
    assert terminal.getvalue().count("a Flower warning") == 1


def test_verbose_brings_flower_info_back_to_the_terminal(terminal, tmp_path, monkeypatch):
    monkeypatch.setenv(VERBOSE_ENV, "1")
    show_progress()
    flower_says(logging.INFO, "configure_train: Sampled 4 nodes")
    assert terminal.getvalue().count("configure_train: Sampled 4 nodes") == 1
    assert "configure_train: Sampled 4 nodes" in (tmp_path / "flower.log").read_text()


def test_a_root_handler_does_not_print_flower_records_again(terminal):
    # opacus calls logging.basicConfig() on import; Flower's records used to reach it too.
    seen: list[logging.LogRecord] = []
    root_handler = logging.Handler()
    root_handler.emit = seen.append  # type: ignore[method-assign]
    logging.getLogger().addHandler(root_handler)
    try:
        show_progress()
        flower_says(logging.WARNING, "once only")
    finally:
        logging.getLogger().removeHandler(root_handler)
    assert terminal.getvalue().count("once only") == 1 and not [r for r in seen if r.name == "flwr"]


def test_nvimagecodec_is_not_available_is_shown_once(terminal, caplog):
    from monai.data.nvimgcodec_pydicom_plugin import is_nvimgcodec_available, register_as_decoder_plugin

    if is_nvimgcodec_available():
        pytest.skip("nvImageCodec is available here: MONAI has nothing to warn about")
    show_progress()
    show_progress()  # the apps may call it more than once: still one filter
    assert sum(isinstance(f, Once) for f in logging.getLogger(NVIMGCODEC).filters) == 1
    with caplog.at_level(logging.WARNING):
        for _ in range(3):  # one volume read each
            register_as_decoder_plugin()
    assert [r.getMessage() for r in caplog.records if r.name == NVIMGCODEC] == [
        "nvImageCodec is not available; skipping pydicom decoder plugin registration."]


def test_the_simulation_tools_quiet_flower_unless_verbose(tmp_path, monkeypatch):
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    monkeypatch.delenv("FLWR_LOG_LEVEL", raising=False)
    quiet = flower_env(tmp_path)
    assert quiet[FLOWER_LOG_ENV] == str(flower_log(tmp_path)) and quiet["FLWR_LOG_LEVEL"] == "WARNING"
    assert VERBOSE_ENV not in quiet
    loud = flower_env(tmp_path, verbose=True)
    assert loud[VERBOSE_ENV] == "1" and "FLWR_LOG_LEVEL" not in loud
    monkeypatch.setenv(VERBOSE_ENV, "1")
    assert "FLWR_LOG_LEVEL" not in flower_env(tmp_path)
