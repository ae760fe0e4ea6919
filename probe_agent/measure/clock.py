"""Clocks: monotonic seconds since a measurement started (``t0``/``t``) and wall time.

Behind a protocol so that tests can drive time (CONTRIBUTING.md 12).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def elapsed(self) -> float:
        """Seconds since the measurement started, from a monotonic clock."""
        ...


class MonotonicClock:
    """The real clock: ``time.monotonic`` relative to its creation."""

    def __init__(self) -> None:
        self._start = time.monotonic()

    def elapsed(self) -> float:
        return round(time.monotonic() - self._start, 6)


def utc_now_rfc3339() -> str:
    """Wall-clock time as RFC 3339 UTC with a ``Z`` suffix, to the millisecond."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
