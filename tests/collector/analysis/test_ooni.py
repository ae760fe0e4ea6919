"""OONI's web_connectivity measurements judged by Blockwatch's rules (collector.analysis.ooni).

The corpus (tests/data/ooni, its README says where each shape comes from) holds
one measurement per case that matters: success, each DNS, TCP, TLS and HTTP
technique, outages, control failures, broken sites and redirects, in test
versions 0.4 and 0.5. ``cases.json`` says what a correct analysis concludes and
why; where that differs from OONI's own ``blocking``, docs/methodology.md
("OONI measurements") says why ours is right.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from collector.analysis import Context, Flag, Reason, Verdict, analyze
from collector.analysis.ooni import OONIFormatError, OONIMeasurement, parse

CORPUS = Path(__file__).resolve().parents[2] / "data" / "ooni"
CASES: list[dict[str, Any]] = json.loads((CORPUS / "cases.json").read_text(encoding="utf-8"))


def load(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((CORPUS / name).read_text(encoding="utf-8"))
    return document


def judge(measurement: OONIMeasurement) -> Verdict:
    ctx = Context(asn_of=measurement.asns.get)
    controls = [measurement.control] if measurement.control is not None else []
    return analyze(measurement.record, controls, ctx)


def outcome(verdict: Verdict) -> str:
    if verdict.blocked:
        return "blocked:" + ",".join(sorted(verdict.flags))
    return ",".join(verdict.flags)


@pytest.mark.parametrize("case", CASES, ids=[c["case"] for c in CASES])
def test_each_case_gets_the_verdict_it_should(case: dict[str, Any]) -> None:
    measurement = parse(load(case["file"]))
    assert (measurement.blocking, measurement.accessible) == (
        case["ooni"]["blocking"],
        case["ooni"]["accessible"],
    )
    assert outcome(judge(measurement)) == case["expected"], case["why"]


def test_the_corpus_covers_what_matters() -> None:
    expected = {c["expected"] for c in CASES}
    assert {"ok", "down", "unknown", "blocked:dns", "blocked:tcp_ip", "blocked:tls",
            "blocked:http"} <= expected  # fmt: skip
    versions = {c["test_version"][:4] for c in CASES}
    assert versions == {"0.4.", "0.5."}


def test_never_blocked_where_the_control_shows_the_site_broken_for_everyone() -> None:
    for case in CASES:
        measurement = parse(load(case["file"]))
        control = measurement.control
        if control is None:
            continue
        helper = load(case["file"])["test_keys"]["control"]["http_request"]
        if helper.get("failure") is not None:  # the test helper could not fetch it either
            assert not judge(measurement).blocked, case["case"]


def test_a_tls_reset_is_tls_not_http_failure() -> None:
    """OONI calls a reset handshake ``http-failure``; it happened in TLS, after a
    connect to the address the control reached: Blockwatch says ``tls``."""
    measurement = parse(load("v05_tls_reset_mastodon_social.json"))
    assert measurement.blocking == "http-failure"
    verdict = judge(measurement)
    assert verdict.flags == {Flag.TLS} and Reason.TLS_HANDSHAKE_CUT.value in verdict.reasons


def test_the_address_is_never_read() -> None:
    """Attribution is probe_cc and probe_asn; probe_ip changes nothing, appears nowhere."""
    document = load("v05_dns_forged_gfw_mstdn_social.json")
    moved = copy.deepcopy(document)
    moved["probe_ip"] = "203.0.113.77"
    first, second = parse(document), parse(moved)
    assert first == second
    assert "203.0.113.77" not in json.dumps([second.record, second.control, second.provenance()])
    assert (second.probe_cc, second.probe_asn) == ("CN", 4134)


def test_provenance_names_the_archive_entry() -> None:
    measurement = parse(load("v05_success_https_mastodon_social.json"))
    provenance = measurement.provenance()
    assert provenance["source"] == "ooni"
    assert provenance["report_id"].endswith("_webconnectivity_CN_4134_n1_" +
                                            provenance["report_id"].rsplit("_", 1)[1])  # fmt: skip
    assert provenance["measurement_uid"] and provenance["input"] == "https://mastodon.social/"
    assert measurement.started_at.isoformat().startswith("2026-06")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"test_name": "dnscheck"}, "test_name"),
        ({"test_version": "0.3.0"}, "test_version"),
        ({"data_format_version": "0.3.0"}, "data_format_version"),
        ({"measurement_start_time": "2026-06-01T10:00:00Z"}, "measurement_start_time"),
        ({"probe_asn": "4134"}, "probe_asn"),
        ({"probe_cc": "China"}, "probe_cc"),
        ({"input": "ftp://mastodon.social/"}, "input"),
        ({"test_keys": None}, "test_keys"),
        ({"report_id": ""}, "report_id"),
    ],
)
def test_bad_measurements_are_refused_with_the_field_at_fault(
    change: dict[str, Any], message: str
) -> None:
    document = {**load("v05_success_https_mastodon_social.json"), **change}
    with pytest.raises(OONIFormatError, match=message):
        parse(document)
    with pytest.raises(OONIFormatError):
        parse([document])


def test_garbled_steps_weaken_the_verdict_never_crash() -> None:
    document = load("v05_tls_reset_mastodon_social.json")
    keys = document["test_keys"]
    keys["tcp_connect"] = [None, {"ip": "not an ip"}, {"ip": "151.101.2.132", "port": "443"}]
    keys["tls_handshakes"] = [{"address": "nowhere"}, 7]
    keys["queries"] = None
    verdict = judge(parse(document))
    assert not verdict.blocked
