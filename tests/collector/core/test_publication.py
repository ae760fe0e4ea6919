"""The publication policy's rules on documents: folding small networks, rounding times."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from collector.core.publication import FULL, Publication, floor_time

PUBLIC = Publication(min_volunteers=3, interval=300.0)


def network(asn: int, state: str, probes: int, since: str, methods: list[str] | None = None,
            cc: str = "CN") -> dict[str, Any]:  # fmt: skip
    updated_at = "2026-12-02T12:09:59.5Z"
    return {"cc": cc, "asn": asn, "state": state, "methods": methods or [], "since": since,
            "probes": probes, "updated_at": updated_at}  # fmt: skip


def test_times_round_down_to_the_interval_exactly() -> None:
    interval = 300.0
    assert floor_time(datetime(2026, 12, 2, 12, 4, 59, 999999, UTC), interval) == datetime(
        2026, 12, 2, 12, 0, tzinfo=UTC
    )
    boundary = datetime(2026, 12, 2, 12, 5, tzinfo=UTC)
    assert floor_time(boundary, interval) == boundary
    assert PUBLIC.time("2026-12-02T12:07:17.123456Z") == "2026-12-02T12:05:00Z"
    assert FULL.time("2026-12-02T12:07:17.123456Z") == "2026-12-02T12:07:17.123456Z"


def test_small_networks_fold_into_a_blocked_country_row_if_any_is_blocked() -> None:
    rows = [
        network(4134, "ok", 5, "2026-12-02T10:00:01Z"),
        network(4837, "ok", 2, "2026-12-02T09:00:00Z"),
        network(9808, "blocked", 1, "2026-12-02T11:03:00Z", ["tls"]),
        network(58466, "blocked", 1, "2026-12-02T11:01:30Z", ["dns"]),
        network(3462, "blocked", 1, "2026-12-02T11:00:00Z", ["dns"], cc="TW"),
    ]
    named, country, taiwan = PUBLIC.networks(rows)
    assert (named["asn"], named["since"]) == (4134, "2026-12-02T10:00:00Z")
    assert country == {
        "cc": "CN", "asn": None, "state": "blocked", "methods": ["dns", "tls"],
        # the earliest of the blocked ones, rounded; every folded volunteer counted
        "since": "2026-12-02T11:00:00Z", "probes": 4, "ooni": False,
        "updated_at": "2026-12-02T12:05:00Z",
    }  # fmt: skip
    assert (taiwan["cc"], taiwan["asn"], taiwan["probes"]) == ("TW", None, 1)


def test_a_country_row_is_down_before_ok_and_ok_before_unknown() -> None:
    down = PUBLIC.networks([network(1, "ok", 1, "2026-12-02T10:00:00Z"),
                            network(2, "down", 1, "2026-12-02T10:00:00Z")])  # fmt: skip
    ok = PUBLIC.networks([network(1, "ok", 1, "2026-12-02T10:00:00Z"),
                          network(2, "unknown", 0, "2026-12-02T10:00:00Z")])  # fmt: skip
    assert [(n["asn"], n["state"]) for n in down + ok] == [(None, "down"), (None, "ok")]


def test_an_event_lists_only_networks_with_k_volunteers() -> None:
    event = {"asns": [4134, 4837, 9808], "started_at": "2026-12-02T11:03:07.5Z", "ended_at": None}
    shown = PUBLIC.event(event, {4134: 3, 4837: 2})
    assert (shown["asns"], shown["withheld_networks"]) == ([4134], 2)
    assert (shown["started_at"], shown["ended_at"]) == ("2026-12-02T11:00:00Z", None)
    assert Publication(min_volunteers=1, interval=300.0).event(event, {})["asns"] == event["asns"]
    assert FULL.event(event, {}) == event | {"withheld_networks": 0}
