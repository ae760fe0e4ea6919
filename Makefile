# Blockwatch: `make demo` shows the main job, `make test` runs every check.
# Everything the targets need is installed here, into .venv (Python) or with
# apt-get (Debian packages), so both work on a fresh clone.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: all venv debs test lint typecheck unit demo bench lab clean

# Debian packages the tests need: iproute2 and iptables for the lab's namespaces
# and censors; podman, runc and debootstrap to build and run the probe's container.
DEBS := iproute2 iptables podman runc debootstrap
DEB_BINS := ip iptables iptables-restore podman runc debootstrap

all: test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[collector,dev]'
	touch $(STAMP)

venv: $(STAMP)

# apt-get only when something is missing, so that a machine that has it all
# (or has no root) is not touched.
debs:
	@missing=0; for b in $(DEB_BINS); do command -v $$b >/dev/null || missing=1; done; \
	if [ $$missing = 1 ]; then \
	  echo "installing $(DEBS) with apt-get"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(DEBS); \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy
	$(BIN)/mypy bench

unit: $(STAMP) debs
	$(BIN)/pytest -q $(PYTEST_ARGS)

test: lint typecheck unit

demo: $(STAMP) debs
	$(BIN)/python -m demo.demo

bench: $(STAMP)
	$(BIN)/python bench/bench_measure.py
	$(BIN)/python bench/bench_ingest.py
	$(BIN)/python bench/bench_probe.py
	$(BIN)/python bench/bench_detection.py
	$(BIN)/python bench/bench_alerts.py

# The censorship lab, for exploring by hand (root, or an unprivileged user namespace).
lab: $(STAMP) debs
	$(BIN)/python -m tests.lab up

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
