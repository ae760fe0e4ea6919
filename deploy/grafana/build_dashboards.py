"""The Grafana dashboards, built from code: ``python deploy/grafana/build_dashboards.py``.

Writes ``deploy/grafana/dashboards/*.json`` (Grafana's dashboard JSON, schema 39,
Grafana 11). The JSON files are committed; tests/deploy/test_grafana.py fails
when they differ from what this script writes, and tests/lab/test_grafana_queries.py
runs every panel's query against a real Prometheus scraping a real collector.

One dashboard, ``blockwatch-overview`` (stable uid): a ``datasource`` variable
(any Prometheus), ``cc`` and ``domain`` variables from the collector's own
series; the state of instances x countries first (what admins open it for),
then open events, probe coverage on a map, detection latency, ingestion, the
detector, the control prober and the alert outbox.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}
STATES = {"0": ("ok", "green"), "1": ("unknown", "text"), "2": ("down", "orange"),
          "3": ("blocked", "red")}  # fmt: skip
CC = 'cc=~"$cc"'
TARGET = 'cc=~"$cc", domain=~"$domain"'


def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False) -> dict[str, Any]:
    found: dict[str, Any] = {"refId": ref, "datasource": DS, "expr": expr, "legendFormat": legend}
    if instant:
        found |= {"instant": True, "range": False, "format": "table"}
    return found


class Layout:
    """Panels in rows of 24 columns, each with its id and grid position."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.x = self.y = self.row_height = 0

    def add(self, panel: dict[str, Any], w: int, h: int) -> None:
        if self.x + w > 24:
            self.x, self.y, self.row_height = 0, self.y + self.row_height, 0
        panel = {"id": len(self.panels) + 1, "datasource": DS, **panel,
                 "gridPos": {"x": self.x, "y": self.y, "w": w, "h": h}}  # fmt: skip
        self.panels.append(panel)
        self.x += w
        self.row_height = max(self.row_height, h)


def timeseries(title: str, unit: str, *targets: dict[str, Any], desc: str = "") -> dict[str, Any]:
    return {
        "type": "timeseries", "title": title, "description": desc, "targets": list(targets),
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"},
                    "tooltip": {"mode": "multi"}},
    }  # fmt: skip


def stat(title: str, unit: str, *targets: dict[str, Any], desc: str = "") -> dict[str, Any]:
    return {
        "type": "stat", "title": title, "description": desc, "targets": list(targets),
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value"},
    }  # fmt: skip


def overview() -> dict[str, Any]:
    layout = Layout()
    mappings = [{"type": "value", "options": {value: {"text": text, "color": color, "index": i}
                 for i, (value, (text, color)) in enumerate(STATES.items())}}]  # fmt: skip
    layout.add({
        "type": "state-timeline",
        "title": "Instances x countries",
        "description": "Each target's state per country, the worst of its networks "
                       "(blockwatch_target_state): ok, unknown, down, blocked.",
        "targets": [target(f"max by (domain, cc) (blockwatch_target_state{{{TARGET}}})",
                           "{{domain}} {{cc}}")],
        "fieldConfig": {"defaults": {"mappings": mappings, "color": {"mode": "thresholds"},
                                     "thresholds": {"mode": "absolute", "steps": [
                                         {"color": "green", "value": None},
                                         {"color": "text", "value": 1},
                                         {"color": "orange", "value": 2},
                                         {"color": "red", "value": 3}]}},
                        "overrides": []},
        "options": {"showValue": "never", "mergeValues": True, "rowHeight": 0.8,
                    "legend": {"showLegend": False}},
    }, 24, 12)  # fmt: skip
    layout.add(stat("Open events", "none",
                    target(f"sum(blockwatch_open_events{{{CC}}})", "open"),
                    desc="Open block events in the chosen countries."), 6, 6)  # fmt: skip
    layout.add(timeseries(
        "Open events by method", "none",
        target(f"sum by (cc, method) (blockwatch_open_events_by_method{{{CC}}})",
               "{{cc}} {{method}}")), 10, 6)  # fmt: skip
    layout.add({
        "type": "geomap",
        "title": "Probe coverage",
        "description": "Volunteers reporting per country (k-anonymous: countries only).",
        "targets": [target(f"max by (cc) (blockwatch_probes_reporting{{{CC}}})", "{{cc}}",
                           instant=True)],
        "fieldConfig": {"defaults": {"unit": "none"}, "overrides": []},
        "options": {"view": {"id": "zero", "lat": 30, "lon": 100, "zoom": 2},
                    "layers": [{"type": "markers", "name": "volunteers",
                                "location": {"mode": "lookup", "lookup": "cc",
                                             "gazetteer": "public/gazetteer/countries.json"},
                                "config": {"showLegend": True,
                                           "size": {"field": "Value", "min": 4, "max": 30}}}]},
    }, 8, 6)  # fmt: skip
    layout.add(timeseries(
        "Detection latency", "s",
        target("histogram_quantile(0.5, sum by (le) "
               "(increase(blockwatch_event_detection_seconds_bucket[1h])))", "median", "A"),
        target("histogram_quantile(0.9, sum by (le) "
               "(increase(blockwatch_event_detection_seconds_bucket[1h])))", "p90", "B"),
        desc="From an event's first blocked evidence to its opening, over the last hour.",
    ), 8, 7)  # fmt: skip
    layout.add(timeseries(
        "Ingestion", "reqps",
        target("sum by (status) (rate(blockwatch_measurements_total[$__rate_interval]))",
               "{{status}}", "A"),
        target("sum by (reason) (rate(blockwatch_rejections_total[$__rate_interval]))",
               "rejected: {{reason}}", "B"),
        desc="Measurements per second by result, and rejected requests by reason.",
    ), 8, 7)  # fmt: skip
    layout.add(timeseries(
        "Measurement age at arrival", "s",
        target("histogram_quantile(0.5, sum by (le) "
               "(rate(blockwatch_measurement_age_seconds_bucket[$__rate_interval])))", "median",
               "A"),
        target("histogram_quantile(0.99, sum by (le) "
               "(rate(blockwatch_measurement_age_seconds_bucket[$__rate_interval])))", "p99",
               "B"),
        desc="Received minus started: spooled rounds of a blocked collector arrive late.",
    ), 8, 7)  # fmt: skip
    layout.add(timeseries(
        "Detector", "s",
        target("histogram_quantile(0.9, sum by (le) "
               "(rate(blockwatch_detector_pass_seconds_bucket[$__rate_interval])))",
               "pass p90", "A"),
        target("max(blockwatch_detector_interval_seconds)", "interval", "B"),
        target("max(blockwatch_analysis_oldest_seconds)", "oldest waiting", "C"),
        desc="Pass duration against the interval, and the oldest measurement waiting for a "
             "verdict (the lag; most of it waits for a control taken after it).",
    ), 8, 7)  # fmt: skip
    layout.add(timeseries(
        "Analysis backlog and lease", "none",
        target("max(blockwatch_analysis_backlog)", "waiting for a verdict", "A"),
        target("sum(blockwatch_lease_held)", "lease holders", "B"),
    ), 8, 7)  # fmt: skip
    layout.add(timeseries(
        "Control prober", "none",
        target("sum(rate(blockwatch_control_measurements_total[$__rate_interval])) * 60",
               "controls / min", "A"),
        target("sum(rate(blockwatch_control_round_seconds_count[$__rate_interval])) * 60",
               "rounds / min", "B"),
        target("sum by (loop) (increase(blockwatch_loop_errors_total[1h])) "
               "or on() vector(0)", "errors (1h) {{loop}}", "C"),
    ), 8, 7)  # fmt: skip
    layout.add(timeseries(
        "Alert outbox", "none",
        target("max(blockwatch_alert_outbox_pending)", "pending", "A"),
        target("max(blockwatch_alert_failing_subscriptions)", "failing subscriptions", "B"),
        target("sum by (outcome) (increase(blockwatch_alert_deliveries_total[1h]))",
               "{{outcome}} (1h)", "C"),
    ), 8, 7)  # fmt: skip
    layout.add({
        "type": "table", "title": "Collector replicas",
        "targets": [target("max by (instance, version, python) (blockwatch_build_info) "
                           "* on(instance) group_left() max by (instance) (up)",
                           instant=True)],
        "fieldConfig": {"defaults": {}, "overrides": []}, "options": {"showHeader": True},
    }, 24, 5)  # fmt: skip

    def variable(name: str, label: str, query: str) -> dict[str, Any]:
        return {"name": name, "label": label, "type": "query", "datasource": DS,
                "definition": query, "query": {"query": query, "refId": name},
                "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2,
                "sort": 1, "current": {"text": "All", "value": "$__all"}}  # fmt: skip

    return {
        "uid": "blockwatch-overview",
        "title": "Blockwatch: what the network sees",
        "description": "Instances x countries, events, coverage, and the collector's health.",
        "tags": ["blockwatch"],
        "schemaVersion": 39,
        "version": 1,
        "editable": False,
        "graphTooltip": 1,
        "time": {"from": "now-24h", "to": "now"},
        "refresh": "1m",
        "timezone": "utc",
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                },
                variable("cc", "Country", "label_values(blockwatch_target_state, cc)"),
                variable(
                    "domain", "Instance", 'label_values(blockwatch_target_state{cc=~"$cc"}, domain)'
                ),
            ]
        },
        "annotations": {"list": []},
        "panels": layout.panels,
    }


DASHBOARDS = {"blockwatch-overview.json": overview}


def render(build: Any) -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main() -> int:
    OUT.mkdir(exist_ok=True)
    for name, build in DASHBOARDS.items():
        (OUT / name).write_text(render(build))
        print(OUT / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
