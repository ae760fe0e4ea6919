"""Per-key request limits for probe endpoints: a token bucket per probe key.

Keyed by the envelope's key id (never by address). Memory is bounded: idle
buckets are dropped once the table grows past a size.
"""

from __future__ import annotations

import threading
import time

from collector.core.errors import RateLimited

MAX_BUCKETS = 100_000


class RateLimiter:
    def __init__(self, per_minute: int, burst: int | None = None) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst if burst is not None else max(1, per_minute))
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def check(self, key: str) -> None:
        """Take one request from *key*'s bucket, or raise RateLimited."""
        if self.rate <= 0:
            return
        now = time.monotonic()
        with self._lock:
            tokens, at = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            if tokens < 1.0:
                raise RateLimited("too many requests from this probe", (1.0 - tokens) / self.rate)
            self._buckets[key] = (tokens - 1.0, now)
            if len(self._buckets) > MAX_BUCKETS:
                full = [k for k, (t, _) in self._buckets.items() if t >= self.burst - 1]
                for stale in full[: len(self._buckets) // 2]:
                    del self._buckets[stale]
