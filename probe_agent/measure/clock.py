"""The monotonic clock of a measurement: seconds since it started (``t0``/``t``).

Wall-clock times are formatted in ``probe_agent.protocol.times``.

Behind a protocol so that tests can drive time (CONTRIBUTING.md 12).
"""

from __future__ import annotations

import time
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
