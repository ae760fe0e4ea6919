"""The detector's state machine: verdicts in, block events out. Pure: no I/O, no clock.

One machine per (domain, country). Each pass hands it the verdicts of that key
inside the sliding window and the state it returned last time; it returns the
new state, the change to publish (opened, updated, closed or none) and the
state of each network (ASN). The rules (docs/methodology.md, "Block events"):

- A *volunteer* votes with its latest *decisive* verdict in the window
  (blocked or ok); ``down`` and ``unknown`` abstain. Volunteers are counted,
  never keys or measurements: a probe that measures ten times, or ten probes
  enrolled with one token, still have one vote (the caller gives each vote
  its volunteer, and leaves out the votes that must not count: revoked
  probes, declared networks nobody vouched for). Below, "probe" means a
  volunteer's vote; the thresholds keep their names (``open_min_probes``...).
- A network (ASN) is blocked when its blocked probes outnumber its ok ones.
- An event opens when the blocked networks hold at least ``open_min_probes``
  blocked probes (2 by default: one probe, lying or broken, never raises an
  alarm). It stays open while the affected networks hold ``stay_min_probes``
  (1) blocked probes, majority or not: entering and leaving need different
  evidence (hysteresis).
- It closes only when no blocked probe is left AND ``close_min_probes`` probes
  of the affected networks say ok: a probe going silent is not an unblock.
- The number of probes reporting is watched: when it falls to
  ``collapse_ratio`` of its peak the collapse is reported (on the event, and in
  the state), not ignored: a network cut off from the collector looks like that.
- ``scope`` is ``national`` when every network measured in the window is among
  the affected ones, ``regional`` otherwise. ASNs and methods accumulate over
  the event's life; a new one is an ``updated`` change. A method joins only
  when as many probes report it as open an event: one probe's odd method does
  not. When no method has that many (an event opened on two probes that
  disagree), the most reported ones stand in, provisionally: they are replaced,
  not accumulated, until one method is agreed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum

from collector.analysis import BLOCK_FLAGS, Flag


class Change(StrEnum):
    OPENED = "opened"
    UPDATED = "updated"
    CLOSED = "closed"


class NetworkState(StrEnum):
    OK = "ok"
    BLOCKED = "blocked"
    DOWN = "down"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Params:
    window: timedelta = timedelta(minutes=15)
    open_min_probes: int = 2
    stay_min_probes: int = 1
    close_min_probes: int = 2
    collapse_ratio: float = 0.5
    # How long a collapsed peak is remembered when no event is open.
    collapse_forget: timedelta = timedelta(days=1)
    max_evidence: int = 50

    def __post_init__(self) -> None:
        if self.open_min_probes < 1 or self.stay_min_probes < 1 or self.close_min_probes < 1:
            raise ValueError("probe thresholds must be at least 1")
        if self.stay_min_probes > self.open_min_probes:
            raise ValueError("stay_min_probes may not exceed open_min_probes (hysteresis)")
        if not 0 < self.collapse_ratio < 1:
            raise ValueError("collapse_ratio must be between 0 and 1")


@dataclass(frozen=True, slots=True)
class Vote:
    """One verdict, as the detector sees it."""

    volunteer: str  # the volunteer who cast it (every probe of one token is one)
    asn: int
    started_at: datetime
    flags: frozenset[str]
    measurement_id: str
    # A public source (OONI's archive: one volunteer per network, ``ooni:<asn>``): it
    # votes in its network, counts at most once toward any quorum of the key, and
    # hides nobody, so it never counts toward the volunteers a network needs to be
    # named (k-anonymity) nor among the probes reporting.
    public: bool = False

    @property
    def blocked(self) -> bool:
        return bool(self.flags & BLOCK_FLAGS)

    @property
    def decisive(self) -> bool:
        return self.blocked or Flag.OK in self.flags


@dataclass(frozen=True, slots=True)
class Event:
    """An event as the machine keeps it (the database row mirrors it)."""

    started_at: datetime
    detected_at: datetime
    updated_at: datetime
    last_blocked_at: datetime
    scope: str
    asns: tuple[int, ...]
    methods: tuple[str, ...]
    volunteers: tuple[str, ...]
    evidence: tuple[str, ...]
    reporting_probes: int
    volume_collapse_at: datetime | None = None
    ended_at: datetime | None = None
    closed_at: datetime | None = None
    # False while ``methods`` are the most reported stand-ins, no method agreed yet.
    methods_agreed: bool = True

    @property
    def open(self) -> bool:
        return self.closed_at is None


@dataclass(frozen=True, slots=True)
class KeyState:
    event: Event | None = None
    active_probes: int = 0
    peak_probes: int = 0
    collapsed_at: datetime | None = None
    last_vote_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class NetworkView:
    asn: int
    state: NetworkState
    methods: tuple[str, ...]
    probes: int  # volunteers with a vote here, public sources not counted
    since: datetime  # earliest of the current votes that make this state
    updated_at: datetime  # the newest vote
    public: bool = False  # a public source (OONI) votes here too


@dataclass(frozen=True, slots=True)
class Outcome:
    state: KeyState
    change: Change | None
    networks: tuple[NetworkView, ...] = field(default=())


def quorum(votes: Iterable[Vote]) -> int:
    """Distinct volunteers among *votes*, public sources (OONI) counted once together:
    OONI alone never makes a quorum of two."""
    volunteers = {v.volunteer for v in votes if not v.public}
    return len(volunteers) + any(v.public for v in votes)


def _latest_per_volunteer(votes: Iterable[Vote]) -> dict[str, Vote]:
    """Each volunteer's vote: its newest decisive verdict (blocked or ok), else its newest
    verdict; but a newer ``down`` replaces an ``ok``. An unknown (residue, a failing
    resolver) never hides what the volunteer saw last. ``down`` means the control
    failed too: the instance went down after this volunteer reached it, which is news
    now, not when the ok leaves the window (that took up to a window and an
    interval: 4 intervals, where a block shows in about 1). A newer ``down`` never
    replaces a blocked vote: an instance that goes down during a block must not make
    the block look like an outage."""
    newest: dict[str, Vote] = {}
    decisive: dict[str, Vote] = {}
    down: dict[str, Vote] = {}
    for vote in votes:
        current = newest.get(vote.volunteer)
        if current is None or vote.started_at > current.started_at:
            newest[vote.volunteer] = vote
        if vote.decisive:
            current = decisive.get(vote.volunteer)
            if current is None or vote.started_at > current.started_at:
                decisive[vote.volunteer] = vote
        elif Flag.DOWN in vote.flags:
            current = down.get(vote.volunteer)
            if current is None or vote.started_at > current.started_at:
                down[vote.volunteer] = vote
    ballots = {}
    for volunteer, vote in newest.items():
        ballot = decisive.get(volunteer, vote)
        fell = down.get(volunteer)
        if fell is not None and Flag.OK in ballot.flags and fell.started_at > ballot.started_at:
            ballot = fell
        ballots[volunteer] = ballot
    return ballots


def _network_views(ballots: dict[str, Vote]) -> tuple[NetworkView, ...]:
    by_asn: dict[int, list[Vote]] = {}
    for vote in ballots.values():
        by_asn.setdefault(vote.asn, []).append(vote)
    views = []
    for asn in sorted(by_asn):
        group = by_asn[asn]
        blocked = [v for v in group if v.blocked]
        ok = [v for v in group if Flag.OK in v.flags]
        down = [v for v in group if Flag.DOWN in v.flags]
        if blocked and len(blocked) > len(ok):
            state, deciding = NetworkState.BLOCKED, blocked
        elif ok:
            state, deciding = NetworkState.OK, ok
        elif down and len(down) == len(group):
            state, deciding = NetworkState.DOWN, down
        else:
            state, deciding = NetworkState.UNKNOWN, group
        methods = sorted({f for v in blocked for f in v.flags & BLOCK_FLAGS})
        views.append(
            NetworkView(
                asn=asn,
                state=state,
                methods=tuple(methods) if state is NetworkState.BLOCKED else (),
                probes=sum(1 for v in group if not v.public),
                since=min(v.started_at for v in deciding),
                updated_at=max(v.started_at for v in group),
                public=any(v.public for v in group),
            )
        )
    return tuple(views)


def _agreed_methods(ballots: Sequence[Vote], params: Params) -> tuple[set[str], bool]:
    """The methods enough probes agree on: as many as open an event (or all of the
    blocked ones, when fewer), and True; failing that, the most reported, and False
    (stand-ins until one is agreed). One probe's odd method (a reset while the
    censor was being reconfigured) does not join."""
    by_method: dict[str, list[Vote]] = {}
    for vote in ballots:
        for method in vote.flags & BLOCK_FLAGS:
            by_method.setdefault(method, []).append(vote)
    counts = {method: quorum(votes) for method, votes in by_method.items()}
    if not counts:
        return set(), False
    needed = min(params.open_min_probes, quorum(ballots))
    agreed = {m for m, n in counts.items() if n >= needed}
    if agreed:
        return agreed, True
    return {m for m, n in counts.items() if n == max(counts.values())}, False


def _grown_methods(event: Event, ballots: Sequence[Vote], params: Params) -> tuple[set[str], bool]:
    """Agreed methods accumulate; stand-ins are replaced, by agreed ones when there
    are (a straddling probe's method then leaves), else by today's most reported."""
    methods, agreed = _agreed_methods(ballots, params)
    if event.methods_agreed:
        return set(event.methods) | (methods if agreed else set()), True
    if agreed or methods:
        return methods, agreed
    return set(event.methods), False


def _merge_evidence(old: Sequence[str], new: Iterable[str], limit: int) -> tuple[str, ...]:
    """Keep the first and the latest ids when there are too many."""
    merged = list(old)
    seen = set(merged)
    for mid in new:
        if mid not in seen:
            seen.add(mid)
            merged.append(mid)
    if len(merged) <= limit:
        return tuple(merged)
    head = limit // 2
    return tuple(merged[:head] + merged[len(merged) - (limit - head) :])


@dataclass(frozen=True, slots=True)
class _Tally:
    """The window's votes, counted once for whichever branch follows."""

    window: list[Vote]
    ballots: dict[str, Vote]  # one per probe
    networks: tuple[NetworkView, ...]
    blocked_asns: frozenset[int]
    measured_asns: frozenset[int]  # blocked or ok
    blocked_ballots: list[Vote]  # the blocked votes of blocked networks


def _tally(votes: Sequence[Vote], params: Params, now: datetime) -> _Tally:
    since = now - params.window
    window = [v for v in votes if since <= v.started_at <= now + params.window]
    ballots = _latest_per_volunteer(window)
    networks = _network_views(ballots)
    blocked = frozenset(n.asn for n in networks if n.state is NetworkState.BLOCKED)
    measured = frozenset(
        n.asn for n in networks if n.state in (NetworkState.BLOCKED, NetworkState.OK)
    )
    return _Tally(
        window=window,
        ballots=ballots,
        networks=networks,
        blocked_asns=blocked,
        measured_asns=measured,
        blocked_ballots=[v for v in ballots.values() if v.blocked and v.asn in blocked],
    )


def evaluate(
    state: KeyState,
    votes: Sequence[Vote],
    params: Params,
    now: datetime,
    withdrawn: frozenset[str] = frozenset(),
) -> Outcome:
    """One step of the machine for one key. *votes* may hold more than the window.

    *withdrawn*: volunteers whose votes stopped counting (revoked). They leave an
    open event's volunteers; an event left with none, and no blocked vote, is
    withdrawn at once (closed now): its evidence is gone.
    """
    tally = _tally(votes, params, now)
    active = sum(1 for v in tally.ballots.values() if not v.public)
    peak = max(state.peak_probes, active)
    collapsed_at = _collapse(state.collapsed_at, active, peak, params, now)
    last_vote_at = max((v.started_at for v in tally.window), default=state.last_vote_at)

    change: Change | None
    if state.event is None or not state.event.open:
        event, change = _open(tally, active, collapsed_at, params, now)
    else:
        event, change = _advance(state.event, tally, params, now, withdrawn)
        if change is not Change.CLOSED:
            event, collapse_change = _watch_volume(event, active, collapsed_at)
            change = change or collapse_change

    forget = collapsed_at is not None and now - collapsed_at >= params.collapse_forget
    if forget and (event is None or not event.open):
        peak, collapsed_at = active, None  # the network has shrunk for good
    return Outcome(
        state=KeyState(
            event=event,
            active_probes=active,
            peak_probes=peak,
            collapsed_at=collapsed_at,
            last_vote_at=last_vote_at,
        ),
        change=change,
        networks=tally.networks,
    )


def _collapse(
    collapsed_at: datetime | None, active: int, peak: int, params: Params, now: datetime
) -> datetime | None:
    """Volume: when the probes reporting fell to the collapse ratio of the peak, if so."""
    collapsing = peak >= params.open_min_probes and active <= peak * params.collapse_ratio
    if not collapsing:
        return None
    return collapsed_at if collapsed_at is not None else now


def _open(
    tally: _Tally, active: int, collapsed_at: datetime | None, params: Params, now: datetime
) -> tuple[Event | None, Change | None]:
    """No open event: open one when enough blocked probes agree, else none."""
    blocked_ballots = tally.blocked_ballots
    if quorum(blocked_ballots) < params.open_min_probes:
        return None, None
    # First blocked evidence: the earliest blocked verdict of the probes that agree.
    agreeing = {v.volunteer for v in blocked_ballots}
    evidence = sorted(
        (v for v in tally.window if v.blocked and v.volunteer in agreeing),
        key=lambda v: v.started_at,
    )
    methods, methods_agreed = _agreed_methods(blocked_ballots, params)
    event = Event(
        started_at=min(v.started_at for v in evidence),
        detected_at=now,
        updated_at=now,
        last_blocked_at=max(v.started_at for v in blocked_ballots),
        scope="national" if tally.blocked_asns >= tally.measured_asns else "regional",
        asns=tuple(sorted(tally.blocked_asns)),
        methods=tuple(sorted(methods)),
        methods_agreed=methods_agreed,
        volunteers=tuple(sorted(agreeing)),
        evidence=_merge_evidence((), (v.measurement_id for v in evidence), params.max_evidence),
        reporting_probes=active,
        volume_collapse_at=collapsed_at,
    )
    return event, Change.OPENED


def _watch_volume(
    event: Event, active: int, collapsed_at: datetime | None
) -> tuple[Event, Change | None]:
    change = None
    if collapsed_at is not None and event.volume_collapse_at is None:
        change = Change.UPDATED  # reported: the probes that saw the block went quiet
    event = replace(event, reporting_probes=active, volume_collapse_at=collapsed_at)
    return event, change


def _advance(
    event: Event, tally: _Tally, params: Params, now: datetime, withdrawn: frozenset[str]
) -> tuple[Event, Change | None]:
    """An open event: grow it, keep it, or close it."""
    window, ballots, blocked_ballots = tally.window, tally.ballots, tally.blocked_ballots
    measured = tally.measured_asns
    asns = set(event.asns) | tally.blocked_asns
    methods, methods_agreed = _grown_methods(event, blocked_ballots, params)
    volunteers = (set(event.volunteers) - withdrawn) | {v.volunteer for v in blocked_ballots}
    # A late measurement may show the block began earlier than thought.
    earliest = min(
        (v.started_at for v in window if v.blocked and v.asn in asns and v.volunteer in volunteers),
        default=event.started_at,
    )
    # Staying open needs less than opening: any blocked probe of an affected network.
    still_blocked = [v for v in ballots.values() if v.blocked and v.asn in asns]
    last_blocked = max([event.last_blocked_at] + [v.started_at for v in still_blocked])
    new_ids = [v.measurement_id for v in sorted(blocked_ballots, key=lambda v: v.started_at)]
    grown = replace(
        event,
        asns=tuple(sorted(asns)),
        methods=tuple(sorted(methods)),
        methods_agreed=methods_agreed,
        volunteers=tuple(sorted(volunteers)),
        started_at=min(event.started_at, earliest),
        last_blocked_at=last_blocked,
        evidence=_merge_evidence(event.evidence, new_ids, params.max_evidence),
        scope="national" if measured and measured <= asns else event.scope,
    )
    if not volunteers and not still_blocked:
        # Every volunteer who saw it was revoked: what opened it no longer counts.
        return replace(grown, ended_at=now, closed_at=now, updated_at=now), Change.CLOSED
    if quorum(still_blocked) < params.stay_min_probes:
        # Nobody sees the block any more. Close only on positive evidence from the
        # networks that saw it: silence is not an unblock.
        ok_after = [
            v
            for v in ballots.values()
            if Flag.OK in v.flags and v.asn in asns and v.started_at > last_blocked
        ]
        if quorum(ok_after) >= params.close_min_probes:
            closed = replace(
                grown,
                ended_at=min(v.started_at for v in ok_after),
                closed_at=now,
                updated_at=now,
            )
            return closed, Change.CLOSED
    material = (grown.asns, grown.methods, grown.scope) != (event.asns, event.methods, event.scope)
    if material:
        return replace(grown, updated_at=now), Change.UPDATED
    return grown, None
