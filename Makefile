# One entry point for users and CI. `make setup` is idempotent and shared by demo and test.
VENV   := .venv
PY     := $(VENV)/bin/python
PYTHON ?= python3
FLWR_HOME := $(CURDIR)/.flwr
STAMP  := $(VENV)/.installed

.PHONY: setup demo test test-fast lint clean

setup: $(STAMP) $(FLWR_HOME)/config.toml

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
	touch $@

$(FLWR_HOME)/config.toml: | $(STAMP)
	$(PY) -m omnirad_fl.simulations.flower_local write-config $(FLWR_HOME)

demo: setup
	$(PY) -m omnirad_fl.simulations.demo "$(ARGS)"

test: setup
	$(PY) -m pytest -q -ra

test-fast: setup
	$(PY) -m pytest -q -ra -m "not slow"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) $(FLWR_HOME) .pytest_cache
