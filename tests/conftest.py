"""Tests read English, whatever the machine's locale.

The probe speaks the language of ``LANG`` (probe_agent.i18n): on a machine set
to ``zh_CN.UTF-8`` every test that reads one of its messages would read Chinese,
the collector's too (they run ``blockwatch-probe verify``). Each test runs with
``BLOCKWATCH_LANG=en`` (which the subprocesses it starts inherit) unless it asks
for another language itself (tests/probe_agent/test_i18n.py).
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _english(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BLOCKWATCH_LANG", "en")
