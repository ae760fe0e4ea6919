# Blockwatch: `make demo` shows the main job, `make test` runs every check.
# Everything the targets need is installed here, into .venv (Python) or with
# apt-get (Debian packages), so both work on a fresh clone.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: all venv test lint typecheck unit demo bench clean

all: test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[collector,dev]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q $(PYTEST_ARGS)

test: lint typecheck unit

demo: $(STAMP)
	$(BIN)/python -m demo.demo

bench: $(STAMP)
	$(BIN)/python bench/bench_measure.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
