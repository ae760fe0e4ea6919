"""Judging's indexes give the answers of the plain definitions they replace.

The trigger index hands a measurement only the latest other trigger before each
of its steps; residue must come out as with every trigger of the probe. The
vantage check counts each probe's round with sorted times; it must flag the
measurements that the quadratic definition flags.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from collector.analysis import Context, Trigger, dns_silent, read, sni_triggers
from collector.analysis.evidence import residue
from collector.detection.judging import ROUND_SPREAD, VANTAGE_MIN, _Triggers, _vantage_failing
from tests.collector.analysis import builders as b

ADDRESSES = [b.REAL_IP, b.SIBLING_IP, "2001:db8::1"]
step = st.tuples(
    st.sampled_from(ADDRESSES), st.booleans(), st.booleans(), st.floats(0, 30, allow_nan=False)
)
steps_of = st.lists(step, max_size=6)
trigger = st.tuples(
    st.sampled_from([*ADDRESSES, "2001:db8:0::1"]),
    st.sampled_from([443, 8443]),
    st.floats(-400, 60, allow_nan=False),
)
triggers_of = st.lists(trigger, max_size=12)
FAILED_AT_5S = [(b.REAL_IP, False, False, 5.0)]
DECOY_AT_1S = (b.REAL_IP, True, True, 1.0)
BEFORE_AND_AFTER_DECOY = [(b.REAL_IP, 443, -10.0), (b.REAL_IP, 443, 2.0)]


def _measurement(steps: list[tuple[str, bool, bool, float]]) -> dict[str, Any]:
    tls = [b.tls(ip, decoy=decoy, failure=None if ok else "connection_reset", t0=t)
           for ip, decoy, ok, t in steps]  # fmt: skip
    return b.measurement(tcp_steps=[b.tcp(ip, t0=t) for ip, _, _, t in steps], tls_steps=tls)


@settings(max_examples=300, deadline=None)
@given(steps_of, triggers_of, st.sampled_from([0.0, 30.0, 180.0]))
# residue from the latest trigger, though an older one lies outside the window
@example(FAILED_AT_5S, [(b.REAL_IP, 443, -300.0), (b.REAL_IP, 443, -10.0)], 180.0)
# the latest trigger is after a decoy that worked, the older one before it
@example([DECOY_AT_1S, *FAILED_AT_5S], BEFORE_AND_AFTER_DECOY, 180.0)
# an address written two ways is one address
@example([("2001:db8::1", False, False, 5.0)], [("2001:db8:0::1", 443, -1.0)], 30.0)
def test_the_latest_trigger_before_each_step_decides_residue(
    steps: list[tuple[str, bool, bool, float]],
    raw: list[tuple[str, int, float]],
    window: float,
) -> None:
    doc = read(_measurement(steps))
    assert doc.started_at is not None
    triggers = [Trigger(ip, port, doc.started_at + timedelta(seconds=s)) for ip, port, s in raw]
    index = _Triggers()
    for trigger in triggers:
        index.add("p", trigger)
    own = sni_triggers(_measurement(steps))
    ctx = Context(residual_seconds=window)
    every = replace(ctx, triggers=tuple(t for t in triggers if t not in own))
    near = replace(ctx, triggers=index.near("p", doc, own))
    assert residue(doc, near) == residue(doc, every)
    if raw[-1:] == [(b.REAL_IP, 443, 2.0)] or raw[-1:] == [(b.REAL_IP, 443, -10.0)]:
        assert residue(doc, every) == {(b.REAL_IP, 443)}  # the examples have residue
    assert index.near("other probe", doc, own) == ()


def _quadratic(rows: list[Any], docs: dict[int, Any]) -> set[int]:
    found = set()
    for row in rows:
        peers = [dns_silent(docs[r.measurement_pk]) for r in rows
                 if r.probe_id == row.probe_id
                 and abs(r.started_at - row.started_at) <= ROUND_SPREAD]  # fmt: skip
        if len(peers) >= VANTAGE_MIN and 2 * sum(peers) >= len(peers):
            found.add(row.measurement_pk)
    return found


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("ab"), st.integers(0, 240), st.booleans()),
                max_size=25))  # fmt: skip
def test_the_vantage_check_flags_what_the_plain_definition_flags(
    seen: list[tuple[str, int, bool]],
) -> None:
    silent = read(b.measurement(dns_steps=[b.dns(failure="generic_timeout_error")]))
    heard = read(b.reached())
    assert dns_silent(silent) and not dns_silent(heard)
    rows = [SimpleNamespace(measurement_pk=i, probe_id=probe,
                            started_at=b.STARTED + timedelta(seconds=s))
            for i, (probe, s, _) in enumerate(seen)]  # fmt: skip
    docs = {i: silent if quiet else heard for i, (_, _, quiet) in enumerate(seen)}
    assert _vantage_failing(rows, docs) == _quadratic(rows, docs)
