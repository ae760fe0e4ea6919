"""The decoy pool: which decoys a measurement shows blocked (only where the real name
worked on the same address), and the pool as handed out (valid names, each once)."""

from __future__ import annotations

from probe_agent.measure.decoys import DEFAULT_POOL, MAX_POOL, blocked_decoys, parse_pool
from probe_agent.measure.observations import Measurement, TLSObservation
from probe_agent.protocol.inputs import normalize_domain


def measured(*handshakes: tuple[str, str, bool, str | None]) -> Measurement:
    """(ip, sni, decoy, failure) handshakes at port 443."""
    m = Measurement(
        measurement_id="m", domain="alive.bar", port=443, scheme="https",
        started_at="2026-12-03T08:00:00Z", software={}, decoy_sni="www.apple.com",
    )  # fmt: skip
    m.tls = [
        TLSObservation(t0=0, t=0.1, ip=ip, port=443, sni=sni, decoy=decoy, failure=failure)
        for ip, sni, decoy, failure in handshakes
    ]
    return m


def test_a_decoy_cut_where_the_instance_worked_is_blocked() -> None:
    m = measured(
        ("192.0.2.1", "www.apple.com", True, "connection_reset"),
        ("192.0.2.1", "alive.bar", False, None),
    )
    assert blocked_decoys(m) == {"www.apple.com"}


def test_a_decoy_failing_with_the_instance_says_nothing_about_the_decoy() -> None:
    both = measured(
        ("192.0.2.1", "www.apple.com", True, "generic_timeout_error"),
        ("192.0.2.1", "alive.bar", False, "generic_timeout_error"),
        ("192.0.2.2", "www.apple.com", True, "connection_reset"),  # no real handshake here
    )
    assert blocked_decoys(both) == set()
    fine = measured(
        ("192.0.2.1", "www.apple.com", True, None), ("192.0.2.1", "alive.bar", False, None)
    )
    assert blocked_decoys(fine) == set()


def test_the_pool_keeps_valid_names_once_and_in_order() -> None:
    assert parse_pool(["A.example", "bad name", "a.example", "例子.测试"]) == (
        "a.example",
        "xn--fsqu00a.xn--0zwm56d",
    )
    assert len(parse_pool(f"d{i}.example" for i in range(MAX_POOL + 5))) == MAX_POOL
    assert all(normalize_domain(n) == n for n in DEFAULT_POOL)
    assert "example.com" not in DEFAULT_POOL and not any("blockwatch" in n for n in DEFAULT_POOL)
