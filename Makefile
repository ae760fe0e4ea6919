# Blockwatch: `make demo` shows the main job, `make test` runs every check.
# Everything the targets need is installed here, into .venv (Python) or with
# apt-get (Debian packages), so both work on a fresh clone. Each target
# installs only what it needs: the demo runs on loopback with the collector's
# Python packages alone; the tests add the dev tools and the Debian packages of
# the lab and the container tests.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev
PYTEST_ARGS ?=

.PHONY: all venv debs lab-debs test lint imports typecheck unit demo bench lab image locale clean

# Debian packages: iproute2 and iptables for the lab's namespaces and censors,
# nginx for the collector served over HTTPS with its name (tests/lab/webfront.py);
# podman, runc and debootstrap to build and run the probe's container image.
LAB_DEBS := iproute2 iptables nginx
LAB_BINS := ip iptables iptables-restore nginx
CONTAINER_DEBS := podman runc debootstrap
CONTAINER_BINS := podman runc debootstrap
# Prometheus, Alertmanager and Caddy: the deploy's rules, tests and configuration are
# checked with their own tools (tests/deploy).
DEPLOY_DEBS := prometheus prometheus-alertmanager caddy
DEPLOY_BINS := prometheus promtool amtool prometheus-alertmanager caddy
# The pages in a real browser (tests/collector/test_pages_browser.py): Chromium and
# its driver, a CJK font for the screenshots, npm for axe-core.
BROWSER_DEBS := chromium chromium-driver fonts-wqy-microhei
# npm (for axe-core) is installed on its own, only when missing: a Node.js from
# elsewhere (NodeSource) brings its own npm and conflicts with Debian's package.
BROWSER_BINS := chromium chromedriver
AXE_VERSION := 4.14.1
AXE := $(VENV)/share/axe-core/axe.min.js

all: test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The probe and the collector (what `make demo` runs).
$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[collector]'
	touch $(RUN_STAMP)

# Plus the checks: ruff, mypy, pytest, import-linter, hypothesis, schemathesis...
$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[collector,dev]'
	touch $(RUN_STAMP) $(DEV_STAMP)

venv: $(DEV_STAMP)

# apt-get only when something is missing, so that a machine that has it all
# (or has no root) is not touched. $(1): packages, $(2): the commands they bring.
define apt_install
	@missing=0; for b in $(2); do command -v $$b >/dev/null || missing=1; done; \
	if [ $$missing = 1 ]; then \
	  echo "installing $(1) with apt-get"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(1); \
	fi
endef

lab-debs:
	$(call apt_install,$(LAB_DEBS),$(LAB_BINS))

debs: lab-debs
	$(call apt_install,$(CONTAINER_DEBS),$(CONTAINER_BINS))
	$(call apt_install,$(DEPLOY_DEBS),$(DEPLOY_BINS))
	$(call apt_install,$(BROWSER_DEBS),$(BROWSER_BINS))
	$(call apt_install,npm,npm)
	@fc-list | grep -qi wqy || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q fonts-wqy-microhei)

# axe-core, the accessibility checker the browser test injects (npm, pinned).
$(AXE): | $(BIN)/python
	mkdir -p $(dir $(AXE))
	cd $(dir $(AXE)) && npm pack --silent axe-core@$(AXE_VERSION) >/dev/null \
	  && tar -xzf axe-core-$(AXE_VERSION).tgz --strip-components=1 package/axe.min.js \
	  && rm axe-core-$(AXE_VERSION).tgz

lint: $(DEV_STAMP) imports
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The import rules of docs/architecture.md ("Rooms and their doors"), as contracts.
imports: $(DEV_STAMP)
	$(BIN)/lint-imports

typecheck: $(DEV_STAMP)
	$(BIN)/mypy
	$(BIN)/mypy bench deploy/images.py

# The pages' translations: gettext catalogs under collector/locale (babel.cfg says
# what is extracted). `make locale` extracts the strings and updates each catalog;
# the compiled .mo files are made from the .po files whenever these change.
# The probe's messages likewise: domain "probe" under probe_agent/locale
# (babel-probe.cfg), read with the standard library's gettext (probe_agent/i18n.py).
# Every target that needs the catalogs (unit, demo, image) has $(MO_FILES), the
# probe's included, so that the wheels and the tests have them.
LOCALES := collector/locale
PROBE_LOCALES := probe_agent/locale
PROBE_MO_FILES := $(patsubst %.po,%.mo,$(wildcard $(PROBE_LOCALES)/*/LC_MESSAGES/probe.po))
MO_FILES := $(patsubst %.po,%.mo,$(wildcard $(LOCALES)/*/LC_MESSAGES/messages.po)) $(PROBE_MO_FILES)

$(LOCALES)/%/LC_MESSAGES/messages.mo: $(LOCALES)/%/LC_MESSAGES/messages.po | $(RUN_STAMP)
	$(BIN)/pybabel compile -i $< -o $@

$(PROBE_LOCALES)/%/LC_MESSAGES/probe.mo: $(PROBE_LOCALES)/%/LC_MESSAGES/probe.po | $(RUN_STAMP)
	$(BIN)/pybabel compile -D probe -i $< -o $@

locale: $(RUN_STAMP)
	$(BIN)/pybabel extract -F babel.cfg --project Blockwatch --version 0.1.0 \
	  --copyright-holder Blockwatch --msgid-bugs-address "" -o $(LOCALES)/messages.pot .
	$(BIN)/pybabel update -i $(LOCALES)/messages.pot -d $(LOCALES) --width 100
	$(BIN)/pybabel compile -d $(LOCALES) --statistics
	$(BIN)/pybabel extract -F babel-probe.cfg --project Blockwatch --version 0.1.0 \
	  --copyright-holder Blockwatch --msgid-bugs-address "" --add-comments TRANSLATORS: \
	  -o $(PROBE_LOCALES)/probe.pot .
	$(BIN)/pybabel update -D probe -i $(PROBE_LOCALES)/probe.pot -d $(PROBE_LOCALES) --width 100
	$(BIN)/pybabel compile -D probe -d $(PROBE_LOCALES) --statistics

unit: $(DEV_STAMP) debs $(MO_FILES) $(AXE)
	$(BIN)/pytest -q $(PYTEST_ARGS)

test: lint typecheck unit

demo: $(RUN_STAMP) $(MO_FILES)
	$(BIN)/python -m demo.demo

bench: $(DEV_STAMP)
	$(BIN)/python bench/bench_measure.py
	$(BIN)/python bench/bench_ingest.py
	$(BIN)/python bench/bench_probe.py
	$(BIN)/python bench/bench_detection.py
	$(BIN)/python bench/bench_alerts.py
	$(BIN)/python bench/bench_scrape.py
	$(BIN)/python bench/bench_pages.py
	$(BIN)/python bench/bench_export.py

# Both images, offline (a debootstrap base, wheels built here): deploy/images.py.
image: $(RUN_STAMP) debs $(MO_FILES)
	$(BIN)/python deploy/images.py

# The censorship lab, for exploring by hand (root, or an unprivileged user namespace).
lab: $(DEV_STAMP) lab-debs
	$(BIN)/python -m tests.lab up

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
