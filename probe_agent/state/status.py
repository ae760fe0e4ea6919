"""The probe's health, for the volunteer and for a container HEALTHCHECK (``status``).

Where this sits in the data flow: beside it, reading what the other parts
leave in ``--state-dir``. The daemon calls ``record_checkin`` after each
successful check-in and ``record_error`` with a short code when something
fails; both update ``state.json`` in place (atomically, keeping the identity's
fields). ``read_status`` joins them with the key's fingerprint, the enrollment
and the spool's counters.

What is recorded is chosen so that ``status`` can be pasted into a bug report:
an error is a short code (``err_unknown_key``, ``collector_unreachable``), never a
message, an address or a domain; ``record_error`` refuses anything else.

Healthy: a check-in within ``HEALTHY_INTERVALS`` intervals (the interval last
handed out by the collector, else ``DEFAULT_INTERVAL``), or a probe that never
ran (no check-in and no error recorded yet: a container just started). A probe
with errors and no check-in ever, or whose last check-in is older, is not.

Caveat: ``identity.save_state`` (called when the probe enrolls) rewrites
``state.json`` with the identity's fields only, dropping what is recorded here
until the next check-in records it again.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from probe_agent.state.identity import (
    KEY_FILE,
    STATE_FILE,
    _load_key,
    atomic_write,
    ensure_state_dir,
    key_id,
    load_state,
)
from probe_agent.state.spool import SPOOL_FILE, Spool

DEFAULT_INTERVAL = 300.0  # seconds: the collector's default --measure-interval
HEALTHY_INTERVALS = 3
ERROR_CODE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
LAST_CHECKIN, INTERVAL = "last_checkin_at", "interval_seconds"
LAST_ERROR, LAST_ERROR_AT = "last_error", "last_error_at"


def _rfc3339(when: datetime) -> str:
    if when.tzinfo is None:
        raise ValueError("a time without a time zone")
    return when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo is not None else None


def _read_raw(state_dir: Path) -> dict[str, Any]:
    """``state.json`` as a dict, or an empty one when it is missing or unreadable."""
    try:
        data = json.loads((state_dir / STATE_FILE).read_bytes())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def update_state(state_dir: Path, changes: dict[str, Any]) -> None:
    """Merge *changes* into ``state.json`` (atomically), keeping every other field."""
    directory = ensure_state_dir(state_dir)
    data = _read_raw(directory) | changes
    text = json.dumps(data, indent=2, sort_keys=True).encode() + b"\n"
    atomic_write(directory / STATE_FILE, text)


def record_checkin(state_dir: Path, when: datetime, interval_seconds: float | None = None) -> None:
    """Record a successful check-in at *when* (and the interval it handed out)."""
    changes: dict[str, Any] = {LAST_CHECKIN: _rfc3339(when)}
    if interval_seconds is not None:
        if not interval_seconds > 0:
            raise ValueError("interval_seconds must be positive")
        changes[INTERVAL] = float(interval_seconds)
    update_state(state_dir, changes)


def record_error(state_dir: Path, code: str, when: datetime | None = None) -> None:
    """Record the last error as a short code (``[a-z][a-z0-9_]*``, at most 64 characters)."""
    if not ERROR_CODE.match(code):
        # A message may carry an address or a domain: only codes are kept.
        raise ValueError("an error code is [a-z][a-z0-9_]*, at most 64 characters")
    update_state(state_dir, {LAST_ERROR: code, LAST_ERROR_AT: _rfc3339(when or datetime.now(UTC))})


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

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        def show(value: object) -> str:
            return "-" if value is None else str(value)

        rejected = ", ".join(f"{c} {n}" for c, n in self.rejected.items()) or "none"
        return [
            f"health:        {'ok' if self.healthy else 'NOT HEALTHY'}",
            f"probe id:      {show(self.probe_id)}"
            + ("" if self.enrolled or self.probe_id is None else " (another key)"),
            f"key id:        {show(self.key_id)}",
            f"last check-in: {self.last_checkin_at or 'never'}"
            f" (interval {self.interval_seconds:g} s)",
            f"last error:    {show(self.last_error)}"
            + (f" at {self.last_error_at}" if self.last_error_at else ""),
            f"spool:         {self.spool_depth} waiting ({self.spool_bytes} bytes), "
            f"{self.evicted_total} evicted, rejected: {rejected}",
        ]


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
    raw = _read_raw(directory)
    current = None
    with contextlib.suppress(FileNotFoundError):
        current = key_id(_load_key(directory / KEY_FILE))
    state = load_state(directory)
    interval = raw.get(INTERVAL)
    if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
        interval = DEFAULT_INTERVAL
    last_checkin = _parse_time(raw.get(LAST_CHECKIN))
    error = raw.get(LAST_ERROR)
    error = error if isinstance(error, str) and ERROR_CODE.match(error) else None
    error_at = _parse_time(raw.get(LAST_ERROR_AT))
    depth = used = evicted = 0
    rejected: dict[str, int] = {}
    if (directory / SPOOL_FILE).exists():
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
    )


RETEST_SPACING, TARGETS = "retest_spacing_seconds", "targets"


def record_schedule(state_dir: Path, retest_spacing: float, targets: list[str]) -> None:
    """Keep the last check-in's retest spacing and targets: the daemon measures them
    again when the collector cannot be reached (its domain may be blocked too)."""
    update_state(state_dir, {RETEST_SPACING: float(retest_spacing), TARGETS: list(targets)})


def cached_schedule(state_dir: Path) -> tuple[float | None, list[str]]:
    """The retest spacing and targets of the last check-in, if any."""
    raw = _read_raw(state_dir.expanduser()) if state_dir.expanduser().is_dir() else {}
    spacing = raw.get(RETEST_SPACING)
    targets = raw.get(TARGETS)
    valid_spacing = float(spacing) if isinstance(spacing, int | float) and spacing >= 0 else None
    valid_targets = [t for t in targets if isinstance(t, str)] if isinstance(targets, list) else []
    return valid_spacing, valid_targets
