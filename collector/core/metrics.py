"""Every Prometheus metric of the collector, declared once, here (CONTRIBUTING.md 11).

Labels come only from bounded sets: statuses, rejection reasons (the error
codes of docs/api.md), roles, countries, methods; never an address or a probe
id. Two exceptions, both bounded and public: ``blockwatch_target_state`` has
the target's domain (the operator's list, published at /api/v1/targets), and
``blockwatch_probes_reporting_network`` an ASN, only for networks with
``--publish-min-volunteers`` volunteers (collector/detection/gauges.py). So the
series are k-anonymous like every public answer (collector/core/publication.py):
no series counts the few volunteers of one network. ``GET /metrics`` needs the
metrics or the admin token, or the private listener
(collector/api/metrics_listener.py).
"""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

REGISTRY = CollectorRegistry(auto_describe=True)

REJECTION_REASONS = frozenset(
    {
        "malformed_json",
        "bad_encoding",
        "malformed_envelope",
        "unknown_key",
        "bad_signature",
        "revoked_key",
        "probe_pending",
        "malformed_payload",
        "timestamp_out_of_window",
        "invalid_domain",
        "body_too_large",
        "batch_too_large",
        "validation",
        "rate_limited",
        "payload_too_large",
        "not_a_target",
        "invalid_token",
        "unauthorized",
        "forbidden",
        "other",
    }
)


def reason(code: str) -> str:
    """The metric label for an error code: the code without ``err_``, from the fixed set."""
    name = code.removeprefix("err_")
    return name if name in REJECTION_REASONS else "other"


MEASUREMENTS = Counter(
    "blockwatch_measurements_total",
    "Submitted measurements by outcome.",
    ["status"],
    registry=REGISTRY,
)
REJECTIONS = Counter(
    "blockwatch_rejections_total",
    "Rejected requests and batch items, by reason.",
    ["reason"],
    registry=REGISTRY,
)
CHECKINS = Counter(
    "blockwatch_checkins_total", "Accepted probe check-ins.", ["role"], registry=REGISTRY
)
ENROLLMENTS = Counter(
    "blockwatch_enrollments_total",
    "Probe enrollments by resulting status.",
    ["status"],
    registry=REGISTRY,
)
BATCH_SECONDS = Histogram(
    "blockwatch_ingest_batch_seconds",
    "Time to verify and store one batch of measurements.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)

CONTROL_MEASUREMENTS = Counter(
    "blockwatch_control_measurements_total",
    "Measurements taken and stored by the collector's control prober.",
    registry=REGISTRY,
)
CONTROL_ROUND_SECONDS = Histogram(
    "blockwatch_control_round_seconds",
    "Time for one round of the control prober.",
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
    registry=REGISTRY,
)
LOOP_ERRORS = Counter(
    "blockwatch_loop_errors_total",
    "Failed rounds of the background loops (control, detector).",
    ["loop"],
    registry=REGISTRY,
)
VERDICTS = Counter(
    "blockwatch_verdicts_total",
    "Per-measurement verdicts, by flag (a blocked verdict counts once per method).",
    ["flag"],
    registry=REGISTRY,
)
EVENT_CHANGES = Counter(
    "blockwatch_event_changes_total",
    "Block event changes: opened, updated, closed.",
    ["kind"],
    registry=REGISTRY,
)
DETECTION_LATENCY = Histogram(
    "blockwatch_event_detection_seconds",
    "From an event's first blocked evidence (started_at) to its opening (detected_at).",
    buckets=(5, 10, 30, 60, 120, 300, 600, 900, 1800, 3600, 3 * 3600, 12 * 3600),
    registry=REGISTRY,
)
DETECTOR_PASS_SECONDS = Histogram(
    "blockwatch_detector_pass_seconds",
    "Time for one detection pass (analysis of new measurements, then the detector).",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
    registry=REGISTRY,
)
DETECTOR_INTERVAL = Gauge(
    "blockwatch_detector_interval_seconds",
    "The detector's interval (--detect-interval): a pass should take less.",
    multiprocess_mode="max",
    registry=REGISTRY,
)
LEASE_HELD = Gauge(
    "blockwatch_lease_held",
    "1 while this process holds the lease (it runs the control prober and the detector).",
    ["lease"],
    multiprocess_mode="liveall",  # one series per live process: the holder is the one at 1
    registry=REGISTRY,
)
OPEN_EVENTS = Gauge(
    "blockwatch_open_events",
    "Open block events, by country.",
    ["cc"],
    multiprocess_mode="mostrecent",
    registry=REGISTRY,
)
OPEN_EVENTS_BY_METHOD = Gauge(
    "blockwatch_open_events_by_method",
    "Open block events, by country and method (an event with two methods counts in both).",
    ["cc", "method"],
    multiprocess_mode="mostrecent",
    registry=REGISTRY,
)
TARGET_STATE = Gauge(
    "blockwatch_target_state",
    "A target's state in a country, the worst of its networks: 0 ok, 1 unknown, 2 down, "
    "3 blocked. The only series with a domain: targets are public, and bounded by the list.",
    ["domain", "cc", "kind"],
    multiprocess_mode="mostrecent",
    registry=REGISTRY,
)
PROBES_REPORTING = Gauge(
    "blockwatch_probes_reporting",
    "Volunteers whose probes checked in within the detector's window, by country.",
    ["cc"],
    multiprocess_mode="mostrecent",
    registry=REGISTRY,
)
PROBES_REPORTING_NETWORK = Gauge(
    "blockwatch_probes_reporting_network",
    "Volunteers reporting per network, only for networks with --publish-min-volunteers of them.",
    ["cc", "asn"],
    multiprocess_mode="mostrecent",
    registry=REGISTRY,
)
ANALYSIS_OLDEST = Gauge(
    "blockwatch_analysis_oldest_seconds",
    "Age of the oldest measurement still waiting for a verdict (the detector's lag).",
    multiprocess_mode="mostrecent",
    registry=REGISTRY,
)
MEASUREMENT_AGE = Histogram(
    "blockwatch_measurement_age_seconds",
    "Accepted measurements' age at arrival (received minus started; spooled ones arrive late).",
    buckets=(5, 15, 60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400),
    registry=REGISTRY,
)
BUILD_INFO = Gauge(
    "blockwatch_build_info",
    "1, with the collector's version and Python's as labels.",
    ["version", "python"],
    multiprocess_mode="max",
    registry=REGISTRY,
)
ANALYSIS_BACKLOG = Gauge(
    "blockwatch_analysis_backlog",
    "Measurements waiting for a verdict (most wait for a control taken after them).",
    multiprocess_mode="mostrecent",
    registry=REGISTRY,
)
VOLUME_COLLAPSES = Gauge(
    "blockwatch_volume_collapses",
    "(domain, country) keys whose reporting probes fell to the collapse ratio of their peak.",
    multiprocess_mode="mostrecent",
    registry=REGISTRY,
)

DELIVERIES = Counter(
    "blockwatch_alert_deliveries_total",
    "Alert delivery attempts by outcome (delivered, retry, dead, gone).",
    ["outcome"],
    registry=REGISTRY,
)
OUTBOX_PENDING = Gauge(
    "blockwatch_alert_outbox_pending",
    "Alert deliveries waiting to be sent (including retries).",
    multiprocess_mode="mostrecent",
    registry=REGISTRY,
)
FAILING_SUBSCRIPTIONS = Gauge(
    "blockwatch_alert_failing_subscriptions",
    "Subscriptions whose deliveries keep failing.",
    multiprocess_mode="mostrecent",
    registry=REGISTRY,
)


def exposition() -> bytes:
    """The text exposition: this process's metrics, or every worker's under `serve --workers`."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        combined = CollectorRegistry()
        multiprocess.MultiProcessCollector(combined)  # type: ignore[no-untyped-call]
        return generate_latest(combined)
    return generate_latest(REGISTRY)
