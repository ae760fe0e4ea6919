"""Consistency check of the OONI test corpus in this directory.

Run: ``.venv/bin/python tests/data/ooni/check.py`` (exit status 0 when all is well).

Checks that every case file is one web_connectivity measurement with the top-level keys of
df-000-base as OONI publishes them, that ``cases.json`` lists every case file exactly once and
repeats its ``blocking``/``accessible`` faithfully, that every JSONL bundle line is one of the
case files, and that ``mixed.jsonl.gz`` is a reproducible gzip of ``mixed.jsonl``.
"""

from __future__ import annotations

import gzip
import json
import pathlib
import re
import sys
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent

TOP_LEVEL = (
    "annotations",
    "data_format_version",
    "input",
    "measurement_start_time",
    "probe_asn",
    "probe_cc",
    "probe_ip",
    "probe_network_name",
    "report_id",
    "resolver_asn",
    "resolver_ip",
    "resolver_network_name",
    "software_name",
    "software_version",
    "test_keys",
    "test_name",
    "test_runtime",
    "test_start_time",
    "test_version",
    "measurement_uid",
)
TEST_KEYS_COMMON = (
    "agent",
    "client_resolver",
    "network_events",
    "tls_handshakes",
    "queries",
    "requests",
    "tcp_connect",
    "control",
    "control_failure",
    "dns_experiment_failure",
    "dns_consistency",
    "http_experiment_failure",
    "body_length_match",
    "body_proportion",
    "headers_match",
    "status_code_match",
    "title_match",
    "blocking",
    "accessible",
)
TEST_KEYS_BY_VERSION = {
    "0.4.3": ("x_status",),
    "0.5.28": (
        "x_dns_flags",
        "x_blocking_flags",
        "x_null_null_flags",
        "x_control_request",
        "x_dns_whoami",
        "x_do53",
        "x_doh",
        "x_dns_duplicate_responses",
        "x_conn_priority_log",
    ),
}
EXPECTED = {"ok", "blocked:dns", "blocked:tcp_ip", "blocked:tls", "blocked:http", "down", "unknown"}
BLOCKING = {False, None, "dns", "tcp_ip", "http-diff", "http-failure"}
TIME_RE = re.compile(r"^2026-06-\d\d \d\d:\d\d:\d\d$")
REPORT_RE = re.compile(r"^\d{8}T\d{6}Z_webconnectivity_[A-Z]{2}_\d+_n1_[A-Za-z0-9]{16}$")
UID_RE = re.compile(r"^\d{14}\.\d{6}_[A-Z]{2}_webconnectivity_[0-9a-f]{16}$")
BUNDLES = ("mixed.jsonl", "all_v04.jsonl", "all_v05.jsonl")


def check_measurement(name: str, m: Any, errors: list[str]) -> None:
    if not isinstance(m, dict):
        errors.append(f"{name}: not a JSON object")
        return
    missing = [k for k in TOP_LEVEL if k not in m]
    if missing:
        errors.append(f"{name}: missing top-level keys {missing}")
        return
    if m["data_format_version"] != "0.2.0" or m["test_name"] != "web_connectivity":
        errors.append(f"{name}: not a 0.2.0 web_connectivity measurement")
    if m["probe_ip"] != "127.0.0.1":
        errors.append(f"{name}: probe_ip is not scrubbed")
    for key in ("measurement_start_time", "test_start_time"):
        if not TIME_RE.match(m[key]):
            errors.append(f"{name}: {key} {m[key]!r} is not 'YYYY-MM-DD HH:MM:SS' in 2026-06")
    if not REPORT_RE.match(m["report_id"]):
        errors.append(f"{name}: odd report_id {m['report_id']!r}")
    if not UID_RE.match(m["measurement_uid"]):
        errors.append(f"{name}: odd measurement_uid {m['measurement_uid']!r}")
    if f"_{m['probe_cc']}_{m['probe_asn'][2:]}_" not in m["report_id"]:
        errors.append(f"{name}: report_id does not carry probe_cc/probe_asn")
    version = m["test_version"]
    if version not in TEST_KEYS_BY_VERSION:
        errors.append(f"{name}: unexpected test_version {version!r}")
        return
    tk = m["test_keys"]
    wanted = TEST_KEYS_COMMON + TEST_KEYS_BY_VERSION[version]
    missing = [k for k in wanted if k not in tk]
    if missing:
        errors.append(f"{name}: missing test_keys {missing}")
    if tk.get("blocking") not in BLOCKING or tk.get("accessible") not in (True, False, None):
        errors.append(f"{name}: blocking/accessible outside OONI's values")
    if tk.get("blocking") is False and tk.get("accessible") is None:
        errors.append(f"{name}: blocking false with accessible null")


def main() -> int:
    errors: list[str] = []
    files = sorted(p.name for p in HERE.glob("*.json") if p.name != "cases.json")
    by_uid: dict[str, Any] = {}
    parsed: dict[str, Any] = {}
    for name in files:
        m = json.loads((HERE / name).read_text(encoding="utf-8"))
        parsed[name] = m
        check_measurement(name, m, errors)
        if isinstance(m, dict) and "measurement_uid" in m:
            by_uid[m["measurement_uid"]] = m

    cases = json.loads((HERE / "cases.json").read_text(encoding="utf-8"))
    listed = [c["file"] for c in cases]
    if sorted(listed) != files:
        errors.append(
            f"cases.json lists {sorted(set(listed) ^ set(files))} wrongly "
            f"(duplicates: {sorted({f for f in listed if listed.count(f) > 1})})"
        )
    for c in cases:
        m = parsed.get(c["file"])
        if m is None:
            continue
        tk = m["test_keys"]
        if c["ooni"] != {"blocking": tk["blocking"], "accessible": tk["accessible"]}:
            errors.append(f"cases.json: {c['file']} ooni values differ from the file")
        if c["test_version"] != m["test_version"] or c["measurement_uid"] != m["measurement_uid"]:
            errors.append(f"cases.json: {c['file']} test_version/measurement_uid differ")
        if c["expected"] not in EXPECTED:
            errors.append(f"cases.json: {c['file']} expected {c['expected']!r} unknown")

    for bundle in BUNDLES:
        lines = (HERE / bundle).read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, 1):
            m = json.loads(line)
            if by_uid.get(m.get("measurement_uid")) != m:
                errors.append(f"{bundle}:{number}: not identical to a case file")

    raw = (HERE / "mixed.jsonl.gz").read_bytes()
    if gzip.decompress(raw) != (HERE / "mixed.jsonl").read_bytes():
        errors.append("mixed.jsonl.gz does not decompress to mixed.jsonl")
    if raw[4:8] != b"\x00\x00\x00\x00":
        errors.append("mixed.jsonl.gz carries an mtime (not reproducible)")

    for e in errors:
        print(e, file=sys.stderr)
    print(
        f"{len(files)} measurements, {len(cases)} cases, {len(BUNDLES)} bundles: "
        f"{'OK' if not errors else f'{len(errors)} problem(s)'}"
    )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
