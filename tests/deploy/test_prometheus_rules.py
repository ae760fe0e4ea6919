"""The operators' alerting, checked by the tools that run it: ``promtool check
rules`` and ``promtool test rules`` (a firing and a quiet case per alert),
``amtool check-config``; and every series a rule reads is one the collector
exports, every alert has its runbook in the operator guide."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.series import exported, read_by

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "blockwatch.rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "tests" / "blockwatch.rules.test.yml"
ALERTMANAGER = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
GUIDE = ROOT / "docs" / "operator-guide.md"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            raise AssertionError(f"{name} is missing: `make debs` installs it")
        pytest.skip(f"{name} is not installed (Debian: prometheus, prometheus-alertmanager)")
    return path


def run(*argv: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def rules() -> list[dict[str, object]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_promtool_checks_the_rules() -> None:
    assert "SUCCESS" in run(tool("promtool"), "check", "rules", str(RULES))


def test_every_alert_fires_and_stays_quiet_where_its_unit_tests_say() -> None:
    output = run(tool("promtool"), "test", "rules", str(RULE_TESTS))
    assert "SUCCESS" in output
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    assert tested == {str(rule["alert"]) for rule in rules()}


def test_amtool_checks_the_alertmanager_configuration() -> None:
    assert "SUCCESS" in run(tool("amtool"), "check-config", str(ALERTMANAGER))


def test_the_rules_read_only_series_the_collector_exports() -> None:
    names = exported()
    for rule in rules():
        for name in read_by(str(rule["expr"])):
            assert name in names, f"{rule['alert']} reads {name}, which nobody exports"


def test_every_alert_has_its_runbook_in_the_operator_guide() -> None:
    headings = set(re.findall(r"^#### (\w+)$", GUIDE.read_text(), re.MULTILINE))
    for rule in rules():
        annotations = rule["annotations"]
        assert isinstance(annotations, dict)
        assert annotations["runbook"] == f"docs/operator-guide.md#{str(rule['alert']).lower()}"
        assert rule["alert"] in headings, f"docs/operator-guide.md lacks #### {rule['alert']}"
