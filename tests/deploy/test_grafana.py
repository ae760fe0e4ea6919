"""The Grafana dashboards as committed: what deploy/grafana/build_dashboards.py
writes, a stable uid, the datasource, country and domain variables, every
panel on the chosen datasource reading series the collector exports.
(tests/lab/test_grafana_queries.py runs the queries on a real Prometheus.)"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.series import exported, read_by

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"


def builder() -> Any:
    spec = importlib.util.spec_from_file_location(
        "build_dashboards", GRAFANA / "build_dashboards.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in (GRAFANA / "dashboards").glob("*.json")}


def test_the_committed_json_is_what_the_builder_writes() -> None:
    module = builder()
    assert set(dashboards()) == set(module.DASHBOARDS)
    for name, build in module.DASHBOARDS.items():
        assert (GRAFANA / "dashboards" / name).read_text() == module.render(build), (
            f"{name} differs: run python deploy/grafana/build_dashboards.py"
        )


def test_uid_variables_and_datasource() -> None:
    board = dashboards()["blockwatch-overview.json"]
    assert board["uid"] == "blockwatch-overview"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"cc", "domain"} <= set(variables)
    names = exported()
    for panel in board["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            for series in read_by(target["expr"]):
                assert series in names, f"{panel['title']} reads {series}, which nobody exports"
    first = board["panels"][0]
    assert first["type"] == "state-timeline" and "$cc" in first["targets"][0]["expr"]


def test_provisioning_points_at_the_dashboards_and_the_datasource() -> None:
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/blockwatch.yaml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    compose = (ROOT / "deploy" / "compose.yaml").read_text()
    assert "./grafana/dashboards:/var/lib/grafana/dashboards:ro" in compose
    source = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yaml").read_text())
    assert source["datasources"][0]["type"] == "prometheus"
