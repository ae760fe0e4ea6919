"""Every Grafana panel's query, and every alert rule, on a real Prometheus that
scrapes a real collector fed by the lab.

Grafana itself cannot be installed here, so its part is played by substituting
the dashboard's variables as Grafana would (``$cc``, ``$domain``, the interval
variables) and asking Prometheus's HTTP API for each query. The scenario gives
every panel something to show: four probes measure three instances, then the
national censor resets the SNI of one (a block, an event), another's server is
down (an outage), a webhook subscription points at a host that refuses
connections (a failing outbox), and a malformed submission is rejected. A query
that errors or returns no series fails the test. The operators' alert rules are
loaded into the same Prometheus: each must evaluate without error; Debian's
Alertmanager runs with deploy/alertmanager/alertmanager.yml, Prometheus sends
to it, and alerts posted to it are grouped and inhibited as the file says.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.lab import topology as topo
from tests.lab.lab import REPO, Lab
from tests.lab.scenarios import national, server
from tests.lab.served import LabCollector
from tests.lab.test_detection_in_lab import INTERVAL, PROBES, Stack

pytestmark = pytest.mark.lab
METRICS_PORT = 9464
PROMETHEUS = f"http://{topo.COLLECTOR}:9090"
ALERTMANAGER = f"http://{topo.COLLECTOR}:9093"
ALERTMANAGER_CONFIG = REPO / "deploy" / "alertmanager" / "alertmanager.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "blockwatch-overview.json"
RULES = REPO / "deploy" / "prometheus" / "blockwatch.rules.yml"
TARGETS = ["alive.test", "o3o.test", "g0v.test"]
# What Grafana puts in place of its variables for this test's view.
VARIABLES = {"$__rate_interval": "1m", "$__interval": "5s", "$__range": "10m",
             "$cc": "CN", "$domain": ".*"}  # fmt: skip


def substitute(expr: str) -> str:
    for name, value in sorted(VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(name, value)
    return expr


class Prometheus:
    """Debian's prometheus in the collector's namespace, scraping it every second."""

    def __init__(self, lab: Lab, directory: Path) -> None:
        self.lab, self.directory = lab, directory
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "alerting": {"alertmanagers": [
                {"static_configs": [{"targets": [f"{topo.COLLECTOR}:9093"]}]}]},
            "scrape_configs": [{
                "job_name": "blockwatch",
                "static_configs": [{"targets": [f"{topo.COLLECTOR}:{METRICS_PORT}"]}],
            }],
        }  # fmt: skip
        (directory / "prometheus.yml").write_text(json.dumps(config))
        self.proc: subprocess.Popen[bytes] | None = None
        self.alertmanager: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with (self.directory / "alertmanager.log").open("ab") as log:
            self.alertmanager = subprocess.Popen(
                ["ip", "netns", "exec", self.lab.ns("col"), "prometheus-alertmanager",
                 f"--config.file={ALERTMANAGER_CONFIG}",
                 f"--storage.path={self.directory / 'alertmanager'}",
                 f"--web.listen-address={topo.COLLECTOR}:9093", "--cluster.listen-address="],
                stdout=log, stderr=log,
            )  # fmt: skip
        with (self.directory / "prometheus.log").open("ab") as log:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.lab.ns("col"), "prometheus",
                 f"--config.file={self.directory / 'prometheus.yml'}",
                 f"--storage.tsdb.path={self.directory / 'tsdb'}",
                 f"--web.listen-address={topo.COLLECTOR}:9090"],
                stdout=log, stderr=log,
            )  # fmt: skip

    def get(self, path: str, base: str = PROMETHEUS, body: Any = None, **params: str) -> Any:
        url = base + path + ("?" + urllib.parse.urlencode(params) if params else "")
        data = None if body is None else json.dumps(body).encode()
        code = (
            "import urllib.request; "
            f"r = urllib.request.Request({url!r}, data={data!r}, "
            "headers={'Content-Type': 'application/json'}); "
            "print(urllib.request.urlopen(r, timeout=20).read().decode())"
        )
        result = self.lab.exec("col", [sys.executable, "-c", code], timeout=60)
        if result.returncode != 0:
            raise RuntimeError(result.stderr[-2000:])
        return json.loads(result.stdout) if result.stdout.strip() else None

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = self.get("/api/v1/query", query=expr)
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def stop(self) -> None:
        for proc in (self.proc, self.alertmanager):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=20)


@pytest.fixture(scope="module")
def fed(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    directory = tmp_path_factory.mktemp("grafana")
    lab.reset()
    collector = LabCollector(
        lab, directory,
        "--measure-interval", f"{INTERVAL}s", "--detect-interval", "1s",
        "--control-resolver", topo.RECURSIVE_RESOLVER, "--lab-network", topo.INTERNET_CIDR,
        "--ca-file", str(lab.ca_file), "--control-timeout", "2", "--webhook-allow-private",
        "--metrics-host", topo.COLLECTOR, "--metrics-port", str(METRICS_PORT),
        env={"BLOCKWATCH_ALERT_INTERVAL": "0.2",
             "BLOCKWATCH_WEBHOOK_ALLOWLIST": topo.INTERNET_CIDR},
    )  # fmt: skip
    collector.cli("targets", "add", *TARGETS)
    # Nobody listens there: every delivery fails and is retried.
    collector.cli("subscriptions", "add", "o3o.test", "--setting",
                  f"url=http://{topo.INJECTION_SINK}:9/hook")  # fmt: skip
    collector.start()
    prometheus = Prometheus(lab, directory)
    stack = Stack(lab, collector, directory)
    prometheus.start()
    try:
        for role in PROBES:
            stack.start_probe(role)
        stack.wait(lambda: len(collector.api("/api/v1/status/alive.test")["networks"]) == 2,
                   12 * INTERVAL, "the first verdicts")  # fmt: skip
        national(sni_rst=["o3o.test"])(lab)
        server("g0v.test", "closed")(lab)
        stack.wait(lambda: any(e["domain"] == "o3o.test" for e in stack.open_events()),
                   12 * INTERVAL, "the o3o.test event")  # fmt: skip
        # A malformed submission: a rejection by reason.
        code = ("import urllib.request; urllib.request.urlopen(urllib.request.Request("
                f"'{collector.url}/api/v1/measurements', data=b'{{', "
                "headers={'Content-Type': 'application/json'}))")  # fmt: skip
        lab.exec("a1", [sys.executable, "-c", code])
        time.sleep(6 * INTERVAL)  # rates over a minute of scrapes; the outage and retries show
        yield prometheus
    finally:
        for proc in stack.probes:
            proc.terminate()
        for proc in stack.probes:
            proc.wait(timeout=10)
        prometheus.stop()
        collector.stop()
        lab.reset()


def panels() -> list[dict[str, Any]]:
    board: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return list(board["panels"])


@pytest.mark.timeout(600)
def test_every_panel_query_returns_series(fed: Prometheus) -> None:
    empty, failed, shown = [], [], {}
    for panel in panels():
        for target in panel["targets"]:
            expr = substitute(target["expr"])
            try:
                result = fed.query(expr)
            except (AssertionError, RuntimeError) as exc:
                failed.append((panel["title"], expr, str(exc)[-300:]))
                continue
            if not result:
                empty.append((panel["title"], expr))
            shown[f"{panel['title']} {target['refId']}"] = len(result)
    assert failed == [], failed
    assert empty == [], empty
    print("\nseries per panel query:", json.dumps(shown, indent=1))


def test_the_state_timeline_shows_the_block_and_the_outage(fed: Prometheus) -> None:
    [timeline] = [p for p in panels() if p["type"] == "state-timeline"]
    states = {
        r["metric"]["domain"]: float(r["value"][1])
        for r in fed.query(substitute(timeline["targets"][0]["expr"]))
    }
    assert states == {"alive.test": 0, "o3o.test": 3, "g0v.test": 2}, states


def test_the_variables_queries_list_the_country_and_the_instances(fed: Prometheus) -> None:
    countries = fed.get("/api/v1/label/cc/values", **{"match[]": "blockwatch_target_state"})
    assert countries["data"] == ["CN"]
    domains = fed.get("/api/v1/label/domain/values",
                      **{"match[]": 'blockwatch_target_state{cc=~"CN"}'})  # fmt: skip
    assert sorted(domains["data"]) == sorted(TARGETS)


def test_the_alert_rules_evaluate_on_real_data(fed: Prometheus) -> None:
    groups = fed.get("/api/v1/rules")["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) >= 11
    assert [r["name"] for r in rules if r.get("health") != "ok"] == [], rules
    # The failing webhook: its deliveries are retried (the outbox panel and alert see it).
    retried = fed.query('sum(blockwatch_alert_deliveries_total{outcome="retry"})')
    assert retried and float(retried[0]["value"][1]) > 0, retried


def test_alertmanager_runs_the_deploy_configuration(fed: Prometheus) -> None:
    # Prometheus found it and sends to it.
    active = fed.get("/api/v1/alertmanagers")["data"]["activeAlertmanagers"]
    assert [a["url"] for a in active] == [f"{ALERTMANAGER}/api/v2/alerts"]
    status = fed.get("/api/v2/status", base=ALERTMANAGER)
    assert "BlockwatchCollectorDown" in status["config"]["original"]  # our file, loaded
    # A replica down inhibits its ingestion alert (the file's first inhibit rule).
    labels = {"job": "blockwatch", "instance": "collector-1:8080", "severity": "critical"}
    fed.get("/api/v2/alerts", base=ALERTMANAGER, body=[
        {"labels": {**labels, "alertname": "BlockwatchCollectorDown"}},
        {"labels": {**labels, "alertname": "BlockwatchIngestionStopped", "severity": "warning"}},
    ])  # fmt: skip
    deadline = time.monotonic() + 20
    found: dict[str, Any] = {}
    while time.monotonic() < deadline:
        alerts = fed.get("/api/v2/alerts", base=ALERTMANAGER)
        found = {a["labels"]["alertname"]: a["status"] for a in alerts}
        if found.get("BlockwatchIngestionStopped", {}).get("inhibitedBy"):
            break
        time.sleep(0.5)
    assert found["BlockwatchCollectorDown"]["state"] == "active", found
    assert found["BlockwatchIngestionStopped"]["state"] == "suppressed", found
    assert found["BlockwatchIngestionStopped"]["inhibitedBy"], found
