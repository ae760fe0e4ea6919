"""The probe's health, for the volunteer and for a container HEALTHCHECK (``status``).

Where this sits in the data flow: beside it, reading what the other parts
leave in ``--state-dir``. The round calls ``record_checkin`` and
``record_schedule`` after each successful check-in and ``record_error`` with a
short code when something fails; all of them update ``state.json`` through
``identity.update_state_fields`` (its one owner: atomically, keeping the
enrollment). ``read_status`` joins them with the key's fingerprint, the
enrollment and the spool's counters.

What is recorded is chosen so that ``status`` can be pasted into a bug report:
an error is a short code (``err_unknown_key``, ``collector_unreachable``), never a
message, an address or a domain; ``record_error`` refuses anything else.

Healthy: a check-in within ``HEALTHY_INTERVALS`` intervals (the interval last
handed out by the collector, else ``DEFAULT_INTERVAL``), or a probe that never
ran (no check-in and no error recorded yet: a container just started). A probe
with errors and no check-in ever, or whose last check-in is older, is not.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from probe_agent.protocol.inputs import is_port
from probe_agent.protocol.messages import N_, Message, Translate, pad, untranslated, width
from probe_agent.protocol.times import rfc3339
from probe_agent.state.files import ensure_state_dir
from probe_agent.state.identity import (
    ProbeState,
    key_id,
    read_key,
    read_state_fields,
    update_state_fields,
)
from probe_agent.state.reach import load_reach, tactic_kind
from probe_agent.state.spool import Spool, spool_exists

DEFAULT_INTERVAL = 300.0  # seconds: the collector's default --measure-interval
# The columns of the human lines: a label, then its value (a way's value two columns
# to the left of the others: the ways are listed under the collector key).
LABEL_COLUMNS, WAY_COLUMNS = 15, 13
HEALTHY_INTERVALS = 3
ERROR_CODE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
LAST_CHECKIN, INTERVAL = "last_checkin_at", "interval_seconds"
LAST_ERROR, LAST_ERROR_AT = "last_error", "last_error_at"
RETEST_SPACING, TARGETS = "retest_spacing_seconds", "targets"
DECOYS = "decoys"  # the operator's decoy pool of the last check-in
TARGET_PORTS = "target_ports"  # the targets measured at another port (a collector's own)


def _rfc3339(when: datetime) -> str:
    return rfc3339(when, timespec="seconds")


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo is not None else None


def _interval(raw: dict[str, Any]) -> float | None:
    """The interval the last check-in handed out, when one was recorded."""
    interval = raw.get(INTERVAL)
    if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
        return None
    return float(interval)


def record_checkin(state_dir: Path, when: datetime, interval_seconds: float | None = None) -> None:
    """Record a successful check-in at *when* (and the interval it handed out)."""
    changes: dict[str, Any] = {LAST_CHECKIN: _rfc3339(when)}
    if interval_seconds is not None:
        if not interval_seconds > 0:
            raise ValueError("interval_seconds must be positive")
        changes[INTERVAL] = float(interval_seconds)
    update_state_fields(state_dir, changes)


def record_error(state_dir: Path, code: str, when: datetime | None = None) -> None:
    """Record the last error as a short code (``[a-z][a-z0-9_]*``, at most 64 characters)."""
    if not ERROR_CODE.match(code):
        # A message may carry an address or a domain: only codes are kept.
        raise ValueError("an error code is [a-z][a-z0-9_]*, at most 64 characters")
    at = _rfc3339(when or datetime.now(UTC))
    update_state_fields(state_dir, {LAST_ERROR: code, LAST_ERROR_AT: at})


@dataclass(frozen=True, slots=True)
class ProbeStatus:
    healthy: bool
    probe_id: str | None = None
    key_id: str | None = None
    enrolled: bool = False
    last_checkin_at: str | None = None
    interval_seconds: float = DEFAULT_INTERVAL
    last_error: str | None = None
    last_error_at: str | None = None
    spool_depth: int = 0
    spool_bytes: int = 0
    evicted_total: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    collector_key_id: str | None = None  # the collector key this probe trusts (state.reach)
    endpoints: int = 0  # ways in from the collector's signed list
    # Each way to the collector tried: its kind, counts and times, never its URL.
    tactics: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self, gettext: Translate = untranslated) -> list[str]:
        """What ``status`` prints for people, in *gettext*'s language (``--json``: English).

        Codes (errors, rejections, a way's kind), ids and times are shown as they are."""

        def show(value: object) -> str:
            return "-" if value is None else str(value)

        def text(template: str, **params: object) -> str:
            return Message(template, **params).render(gettext)

        rejected = ", ".join(f"{c} {n}" for c, n in self.rejected.items()) or gettext(N_("none"))
        probe_id = show(self.probe_id)
        if not (self.enrolled or self.probe_id is None):
            probe_id = text(N_("%(probe_id)s (another key)"), probe_id=probe_id)
        last_error = show(self.last_error)
        if self.last_error_at:
            last_error = text(
                N_("%(error)s at %(time)s"), error=last_error, time=self.last_error_at
            )
        fields = [
            (gettext(N_("health:")), gettext(N_("ok") if self.healthy else N_("NOT HEALTHY"))),
            (gettext(N_("probe id:")), probe_id),
            (gettext(N_("key id:")), show(self.key_id)),
            (
                gettext(N_("last check-in:")),
                text(
                    N_("%(time)s (interval %(seconds)s s)"),
                    time=self.last_checkin_at or Message(N_("never")),
                    seconds=f"{self.interval_seconds:g}",
                ),
            ),
            (gettext(N_("last error:")), last_error),
            (
                gettext(N_("spool:")),
                text(
                    N_(
                        "%(depth)s waiting (%(bytes)s bytes), %(evicted)s evicted, "
                        "rejected: %(rejected)s"
                    ),
                    depth=self.spool_depth,
                    bytes=self.spool_bytes,
                    evicted=self.evicted_total,
                    rejected=rejected,
                ),
            ),
            (
                gettext(N_("collector key:")),
                text(
                    N_("%(key_id)s (%(count)s listed endpoint(s))"),
                    key_id=show(self.collector_key_id),
                    count=self.endpoints,
                ),
            ),
        ]
        columns = max(LABEL_COLUMNS, *(width(label) + 1 for label, _ in fields))
        lines = [pad(label, columns) + value for label, value in fields]
        for t in self.tactics:
            label = text(N_("way %(number)s:"), number=t["way"])
            value = text(
                N_("%(kind)s, %(ok)s ok, %(failed)s failed"),
                kind=t["kind"],
                ok=t["ok"],
                failed=t["failed"],
            )
            if t["last_used"]:
                value = text(N_("%(way)s (used last)"), way=value)
            lines.append(pad(label, max(WAY_COLUMNS, width(label) + 1)) + value)
        return lines


def is_healthy(
    last_checkin: datetime | None, has_error: bool, interval: float, now: datetime
) -> bool:
    if last_checkin is None:
        return not has_error  # never ran yet (or never got far enough to fail)
    return (now - last_checkin).total_seconds() <= HEALTHY_INTERVALS * interval


def read_status(state_dir: Path, now: datetime | None = None) -> ProbeStatus:
    """The probe's status; creates nothing (a missing directory is a probe never run).

    Raises ``IdentityError`` for a key file or a directory others can access.
    """
    directory = state_dir.expanduser()
    if not directory.is_dir():
        return ProbeStatus(healthy=True)
    directory = ensure_state_dir(directory)
    raw = read_state_fields(directory)
    key = read_key(directory)
    current = key_id(key) if key is not None else None
    state = ProbeState.from_fields(raw)
    interval = _interval(raw) or DEFAULT_INTERVAL
    last_checkin = _parse_time(raw.get(LAST_CHECKIN))
    error = raw.get(LAST_ERROR)
    error = error if isinstance(error, str) and ERROR_CODE.match(error) else None
    error_at = _parse_time(raw.get(LAST_ERROR_AT))
    depth = used = evicted = 0
    rejected: dict[str, int] = {}
    if spool_exists(directory):
        with Spool(directory) as spool:
            depth, used = spool.depth(), spool.bytes_used()
            evicted, rejected = spool.evicted_total(), spool.rejected_totals()
    return ProbeStatus(
        healthy=is_healthy(
            last_checkin, error is not None, float(interval), now or datetime.now(UTC)
        ),
        probe_id=state.probe_id,
        key_id=current,
        enrolled=current is not None and state.enrolled_as(current),
        last_checkin_at=_rfc3339(last_checkin) if last_checkin else None,
        interval_seconds=float(interval),
        last_error=error,
        last_error_at=_rfc3339(error_at) if error_at else None,
        spool_depth=depth,
        spool_bytes=used,
        evicted_total=evicted,
        rejected=rejected,
        **_reach(directory),
    )


def _reach(directory: Path) -> dict[str, Any]:
    kept = load_reach(directory)
    tactics = []
    for number, (key, stats) in enumerate(kept.tactics.items(), 1):
        kind = tactic_kind(key)
        if kind is None:
            continue
        tactics.append(
            {"way": number, "kind": kind, **stats.to_json(), "last_used": key == kept.last_tactic}
        )
    return {
        "collector_key_id": kept.key_id,
        "endpoints": len(kept.endpoints.endpoints) if kept.endpoints else 0,
        "tactics": tactics,
    }


@dataclass(frozen=True, slots=True)
class Schedule:
    """When and what to measure: what a check-in handed out (None: not known)."""

    interval_seconds: float | None = None
    retest_spacing_seconds: float | None = None
    targets: list[str] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)  # targets at another port than --port
    decoys: tuple[str, ...] = ()  # the collector's decoy pool (empty: the probe's default)


def record_schedule(
    state_dir: Path,
    retest_spacing: float,
    targets: list[str],
    ports: dict[str, int] | None = None,
    decoys: tuple[str, ...] = (),
) -> None:
    """Keep the last check-in's retest spacing and targets: the daemon measures them
    again when the collector cannot be reached (its domain may be blocked too, and
    the collector's own names are among the targets: their measurements say so)."""
    update_state_fields(
        state_dir,
        {
            RETEST_SPACING: float(retest_spacing),
            TARGETS: list(targets),
            TARGET_PORTS: dict(ports or {}),
            DECOYS: list(decoys),
        },
    )


def cached_schedule(state_dir: Path) -> Schedule:
    """The schedule of the last check-in recorded, as far as it is known."""
    directory = state_dir.expanduser()
    raw = read_state_fields(directory) if directory.is_dir() else {}
    spacing = raw.get(RETEST_SPACING)
    targets = raw.get(TARGETS)
    valid_spacing = float(spacing) if isinstance(spacing, int | float) and spacing >= 0 else None
    valid_targets = [t for t in targets if isinstance(t, str)] if isinstance(targets, list) else []
    ports = raw.get(TARGET_PORTS)
    valid_ports = (
        {d: p for d, p in ports.items() if d in valid_targets and is_port(p)}
        if isinstance(ports, dict)
        else {}
    )
    pool = raw.get(DECOYS)
    valid_pool = tuple(d for d in pool if isinstance(d, str)) if isinstance(pool, list) else ()
    return Schedule(_interval(raw), valid_spacing, valid_targets, valid_ports, valid_pool)
