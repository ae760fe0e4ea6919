"""The detector's state machine, step by step (pure: no database, no clock)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from collector.detection.machine import (
    Change,
    KeyState,
    NetworkState,
    Outcome,
    Params,
    Vote,
    evaluate,
)

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)
PARAMS = Params(window=15 * MIN)
CN_A, CN_B = 4134, 4837


class Votes:
    def __init__(self) -> None:
        self.votes: list[Vote] = []
        self.n = 0

    def add(self, probe: str, asn: int, at: datetime, *flags: str) -> Vote:
        self.n += 1
        vote = Vote(probe, asn, at, frozenset(flags), f"m{self.n}")
        self.votes.append(vote)
        return vote

    def round(self, at: datetime, flags: dict[str, tuple[int, tuple[str, ...]]]) -> None:
        for probe, (asn, f) in flags.items():
            self.add(probe, asn, at, *f)


def run(state: KeyState, votes: Votes, now: datetime) -> Outcome:
    return evaluate(state, votes.votes, PARAMS, now)


BLOCKED = ("dns", "tls")
OK = ("ok",)


def everyone(flags: tuple[str, ...]) -> dict[str, tuple[int, tuple[str, ...]]]:
    return {"a1": (CN_A, flags), "a2": (CN_A, flags), "b1": (CN_B, flags), "b2": (CN_B, flags)}


def test_two_agreeing_probes_open_one_national_event() -> None:
    v = Votes()
    v.round(T0, everyone(OK))
    out = run(KeyState(), v, T0 + MIN)
    assert out.change is None and out.state.event is None
    v.round(T0 + 5 * MIN, everyone(BLOCKED))
    out = run(out.state, v, T0 + 6 * MIN)
    assert out.change is Change.OPENED
    event = out.state.event
    assert event is not None
    assert event.scope == "national"
    assert event.asns == (CN_A, CN_B)
    assert event.methods == ("dns", "tls")
    assert event.started_at == T0 + 5 * MIN
    assert event.detected_at == T0 + 6 * MIN
    assert len(event.volunteers) == 4
    assert {n.state for n in out.networks} == {NetworkState.BLOCKED}


def test_one_probe_never_opens_an_event() -> None:
    v = Votes()
    for i in range(10):
        v.round(T0 + i * MIN, {"a1": (CN_A, BLOCKED), "a2": (CN_A, OK), "b1": (CN_B, OK)})
    out = run(KeyState(), v, T0 + 10 * MIN)
    assert out.change is None and out.state.event is None
    # Even alone in its network it is one probe: below the two that must agree.
    lone = Votes()
    lone.round(T0, {"a1": (CN_A, BLOCKED)})
    assert run(KeyState(), lone, T0 + MIN).state.event is None


def test_measurements_are_not_probes() -> None:
    v = Votes()
    for i in range(20):
        v.add("a1", CN_A, T0 + i * timedelta(seconds=10), *BLOCKED)
    assert run(KeyState(), v, T0 + 4 * MIN).state.event is None


def test_regional_block_names_only_its_network() -> None:
    v = Votes()
    v.round(T0, {"a1": (CN_A, OK), "a2": (CN_A, OK), "b1": (CN_B, BLOCKED), "b2": (CN_B, BLOCKED)})
    out = run(KeyState(), v, T0 + MIN)
    event = out.state.event
    assert out.change is Change.OPENED and event is not None
    assert event.scope == "regional" and event.asns == (CN_B,)


def test_spreading_block_updates_the_same_event() -> None:
    v = Votes()
    v.round(
        T0, {"a1": (CN_A, OK), "a2": (CN_A, OK), "b1": (CN_B, ("tls",)), "b2": (CN_B, ("tls",))}
    )
    out = run(KeyState(), v, T0 + MIN)
    v.round(T0 + 5 * MIN, everyone(("dns",)))
    out = run(out.state, v, T0 + 6 * MIN)
    assert out.change is Change.UPDATED
    event = out.state.event
    assert event is not None
    assert event.asns == (CN_A, CN_B) and event.scope == "national"
    assert event.methods == ("dns", "tls")  # methods accumulate
    assert event.started_at == T0  # still the first evidence
    # Nothing new: no change to publish.
    out = run(out.state, v, T0 + 7 * MIN)
    assert out.change is None


def test_close_needs_ok_probes_in_the_affected_networks() -> None:
    v = Votes()
    v.round(T0, everyone(BLOCKED))
    out = run(KeyState(), v, T0 + MIN)
    # One probe says ok: the other three still see the block.
    v.add("a1", CN_A, T0 + 5 * MIN, *OK)
    out = run(out.state, v, T0 + 6 * MIN)
    assert out.state.event is not None and out.state.event.open
    v.round(T0 + 10 * MIN, everyone(OK))
    out = run(out.state, v, T0 + 11 * MIN)
    assert out.change is Change.CLOSED
    event = out.state.event
    assert event is not None and not event.open
    assert event.ended_at == T0 + 5 * MIN or event.ended_at == T0 + 10 * MIN
    assert event.closed_at == T0 + 11 * MIN


def test_hysteresis_one_blocked_probe_keeps_an_open_event() -> None:
    v = Votes()
    v.round(T0, everyone(BLOCKED))
    out = run(KeyState(), v, T0 + MIN)
    v.round(
        T0 + 5 * MIN, {"a1": (CN_A, OK), "a2": (CN_A, BLOCKED), "b1": (CN_B, OK), "b2": (CN_B, OK)}
    )
    out = run(out.state, v, T0 + 6 * MIN)
    # a2 alone could not open an event, but it keeps this one open.
    assert out.state.event is not None and out.state.event.open


def test_silence_is_not_an_unblock_and_a_collapse_is_reported() -> None:
    v = Votes()
    v.round(T0, everyone(BLOCKED))
    out = run(KeyState(), v, T0 + MIN)
    assert out.state.peak_probes == 4
    # Every probe goes quiet: the votes age out of the window.
    out = run(out.state, v, T0 + 30 * MIN)
    event = out.state.event
    assert event is not None and event.open
    assert out.change is Change.UPDATED
    assert event.volume_collapse_at == T0 + 30 * MIN and event.reporting_probes == 0
    assert out.state.collapsed_at == T0 + 30 * MIN
    # Reported once, not every pass.
    out = run(out.state, v, T0 + 31 * MIN)
    assert out.change is None and out.state.event is not None and out.state.event.open


def test_collapse_without_event_is_in_the_state() -> None:
    v = Votes()
    v.round(T0, everyone(OK))
    out = run(KeyState(), v, T0 + MIN)
    v2 = Votes()
    v2.round(T0 + 20 * MIN, {"a1": (CN_A, OK)})
    out = run(out.state, v2, T0 + 21 * MIN)
    assert out.state.collapsed_at == T0 + 21 * MIN and out.state.event is None
    v2.round(T0 + 25 * MIN, everyone(OK))
    out = run(out.state, v2, T0 + 26 * MIN)
    assert out.state.collapsed_at is None


def test_down_and_unknown_abstain() -> None:
    v = Votes()
    v.round(T0, everyone(("down",)))
    out = run(KeyState(), v, T0 + MIN)
    assert out.state.event is None
    assert {n.state for n in out.networks} == {NetworkState.DOWN}
    # A probe's last decisive vote counts over a later unknown (e.g. residue).
    v.round(T0 + 2 * MIN, everyone(BLOCKED))
    v.round(T0 + 3 * MIN, everyone(("unknown",)))
    out = run(out.state, v, T0 + 4 * MIN)
    assert out.change is Change.OPENED


def test_late_measurement_moves_the_start_earlier() -> None:
    v = Votes()
    v.round(T0 + 5 * MIN, everyone(BLOCKED))
    out = run(KeyState(), v, T0 + 6 * MIN)
    assert out.state.event is not None and out.state.event.started_at == T0 + 5 * MIN
    v.add("b1", CN_B, T0 + 2 * MIN, *BLOCKED)  # arrives late, measured earlier
    out = run(out.state, v, T0 + 7 * MIN)
    assert out.state.event is not None and out.state.event.started_at == T0 + 2 * MIN


def test_params_refuse_inverted_hysteresis() -> None:
    with pytest.raises(ValueError, match="hysteresis"):
        Params(open_min_probes=1, stay_min_probes=2)


def test_evidence_is_bounded_and_keeps_first_and_latest() -> None:
    v = Votes()
    for i in range(100):
        v.round(T0 + i * timedelta(seconds=5), {"a1": (CN_A, BLOCKED), "a2": (CN_A, BLOCKED)})
    state = KeyState()
    for i in range(0, 100, 10):
        state = evaluate(
            state,
            v.votes[: (i + 10) * 2],
            Params(window=60 * MIN, max_evidence=10),
            T0 + i * timedelta(seconds=5),
        ).state
    assert state.event is not None
    assert len(state.event.evidence) == 10
    assert state.event.evidence[0] == "m1"


def test_one_probes_odd_method_does_not_join_the_event() -> None:
    v = Votes()
    v.round(T0, {"a1": (CN_A, ("tls",)), "a2": (CN_A, ("tls",)), "b1": (CN_B, ("tls",)),
                 "b2": (CN_B, ("tcp_ip",))})  # fmt: skip
    out = run(KeyState(), v, T0 + MIN)
    assert out.state.event is not None and out.state.event.methods == ("tls",)
    # Once two probes see it, it is part of the event (an update).
    v.round(T0 + 2 * MIN, {"a1": (CN_A, ("tls", "dns")), "b1": (CN_B, ("tls", "dns"))})
    out = run(out.state, v, T0 + 3 * MIN)
    assert out.change is Change.UPDATED
    assert out.state.event is not None and out.state.event.methods == ("dns", "tls")


def test_a_straddling_probes_method_is_provisional_and_leaves_once_others_agree() -> None:
    # The lab's June wave: an IP blackhole began while a1 was mid-measurement (TCP
    # connected before, the handshake cut after: "tls"); b1 saw what the censor does.
    v = Votes()
    v.round(T0 + 5 * MIN, {"a1": (CN_A, ("tls",)), "b1": (CN_B, ("tcp_ip",))})
    out = run(KeyState(), v, T0 + 5 * MIN)
    event = out.state.event
    assert out.change is Change.OPENED and event is not None
    assert event.methods == ("tcp_ip", "tls") and not event.methods_agreed
    # The next votes agree: the stand-ins are replaced, not accumulated.
    v.round(T0 + 6 * MIN, {"a2": (CN_A, ("tcp_ip",)), "b2": (CN_B, ("tcp_ip",))})
    out = run(out.state, v, T0 + 6 * MIN)
    event = out.state.event
    assert out.change is Change.UPDATED and event is not None
    assert event.methods == ("tcp_ip",) and event.methods_agreed
    # Agreed methods accumulate as before; a lone odd one still does not join.
    v.round(T0 + 7 * MIN, {"a1": (CN_A, ("tcp_ip",)), "b1": (CN_B, ("tcp_ip", "dns"))})
    out = run(out.state, v, T0 + 7 * MIN)
    assert out.state.event is not None and out.state.event.methods == ("tcp_ip",)


def test_stand_in_methods_follow_the_votes_until_one_is_agreed() -> None:
    v = Votes()
    v.round(T0, {"a1": (CN_A, ("dns",)), "b1": (CN_B, ("tls",))})
    out = run(KeyState(), v, T0)
    assert out.state.event is not None and out.state.event.methods == ("dns", "tls")
    v.round(T0 + MIN, {"a1": (CN_A, ("dns",)), "b1": (CN_B, ("dns",))})
    out = run(out.state, v, T0 + MIN)
    assert out.state.event is not None
    assert out.state.event.methods == ("dns",) and out.state.event.methods_agreed
    # Agreed at open: a later disagreement adds nothing and removes nothing.
    w = Votes()
    w.round(T0, {"a1": (CN_A, ("dns",)), "b1": (CN_B, ("dns",))})
    out = run(KeyState(), w, T0)
    w.round(T0 + MIN, {"a1": (CN_A, ("tls",)), "b1": (CN_B, ("http",))})
    out = run(out.state, w, T0 + MIN)
    assert out.state.event is not None and out.state.event.methods == ("dns",)


def public(votes: Votes, asn: int, at: datetime, *flags: str) -> None:
    """OONI's vote: one volunteer a network, a public source."""
    votes.n += 1
    votes.votes.append(Vote(f"ooni:{asn}", asn, at, frozenset(flags), f"m{votes.n}", True))


def test_a_public_source_counts_once_and_never_names_a_network() -> None:
    v = Votes()
    public(v, CN_A, T0, *BLOCKED)
    public(v, CN_B, T0, *BLOCKED)
    out = run(KeyState(), v, T0 + MIN)
    # Both networks blocked on OONI's word, but OONI alone is one volunteer: no event,
    # nobody counted as reporting, no volunteer for k-anonymity.
    assert out.change is None and out.state.event is None
    assert {(n.asn, n.state, n.probes, n.public) for n in out.networks} == {
        (CN_A, NetworkState.BLOCKED, 0, True), (CN_B, NetworkState.BLOCKED, 0, True),
    }  # fmt: skip
    assert out.state.active_probes == 0
    v.add("a1", CN_A, T0 + MIN, *BLOCKED)  # one volunteer agrees: a quorum of two
    out = run(out.state, v, T0 + 2 * MIN)
    assert out.change is Change.OPENED and out.state.event is not None
    assert set(out.state.event.methods) == {"dns", "tls"}
    # OONI's ok votes in two networks are one ok: with one volunteer's, two close it.
    later = T0 + 5 * MIN
    public(v, CN_A, later, *OK)
    public(v, CN_B, later, *OK)
    v.add("a1", CN_A, later, *OK)
    closed = run(out.state, v, later + MIN)
    assert closed.change is Change.CLOSED


def test_an_outage_shows_at_once_not_when_the_last_ok_leaves_the_window() -> None:
    v = Votes()
    v.round(T0, everyone(OK))
    out = run(KeyState(), v, T0 + MIN)
    assert {n.state for n in out.networks} == {NetworkState.OK}
    v.round(T0 + 5 * MIN, everyone(("down",)))  # the control failed too: an outage
    out = run(out.state, v, T0 + 6 * MIN)  # the ok votes are still in the window
    assert {n.state for n in out.networks} == {NetworkState.DOWN}
    assert out.state.event is None
    # Back up: the newest ok is decisive again.
    v.round(T0 + 10 * MIN, everyone(OK))
    out = run(out.state, v, T0 + 11 * MIN)
    assert {n.state for n in out.networks} == {NetworkState.OK}


def test_an_outage_during_a_block_never_makes_it_an_outage() -> None:
    v = Votes()
    v.round(T0, everyone(BLOCKED))
    out = run(KeyState(), v, T0 + MIN)
    assert out.change is Change.OPENED
    v.round(T0 + 5 * MIN, everyone(("down",)))
    out = run(out.state, v, T0 + 6 * MIN)
    assert {n.state for n in out.networks} == {NetworkState.BLOCKED}
    assert out.state.event is not None and out.state.event.open
    # An older down never replaces a newer ok, and a residue unknown still hides nothing.
    v2 = Votes()
    v2.round(T0, everyone(("down",)))
    v2.round(T0 + MIN, everyone(OK))
    v2.round(T0 + 2 * MIN, everyone(("unknown",)))
    out = run(KeyState(), v2, T0 + 3 * MIN)
    assert {n.state for n in out.networks} == {NetworkState.OK}
