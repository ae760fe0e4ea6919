"""What a verified key may store: its rate, its quota, and which domains.

Every limit here applies *after* the signature (``collector.services.auth``):
a junk item costs its sender a rejection, never another probe's budget, and
cannot buy a fresh bucket by naming a key it does not hold.

- **Rate**: each verified key takes one request from its token bucket per
  batch (``probe_rate_limit`` a minute); requests in which no item verifies
  share one bucket (``unverified_rate_limit``), so a flood of junk is refused
  before it costs a database read per item.
- **Quota**: a key may store ``measurement_quota`` measurements per
  measurement interval of *measurement time* (``started_at``), by default 4 per
  target plus 32. A spool draining a week of backlog spreads over a week of
  intervals: the rate slows it, the quota never refuses it; a key that claims
  a thousand measurements of one interval is refused the rest.
- **Domains**: a measurement must be of a target, of a target removed within
  the spool's life (``max_age``), or of one of the collector's own host names.

Counters live in the process (a replica's quota is its own: with N replicas a
key can store up to N times its quota, which bounds an attack, not a probe).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Protocol
from urllib.parse import urlsplit

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from collector.core.errors import RateLimited, Unprocessable
from collector.core.models import TargetRow
from collector.core.settings import CollectorSettings

TARGETS_TTL = 10.0  # seconds a snapshot of the target list is reused
MAX_QUOTA_BUCKETS = 200_000
UNVERIFIED = "unverified:*"  # the bucket of requests in which no key verified


class Limiter(Protocol):
    def check(self, key: str) -> None:
        """Take one request from *key*'s bucket, or raise RateLimited."""


class _Targets:
    """The domains a measurement may name, read at most every TARGETS_TTL seconds.

    One thread reads; while it does, the others go on with the snapshot it replaces
    (a target added a few seconds ago may wait one more read). Only the first read,
    with nothing to go on, makes them wait. Without that, every request thread that
    found the snapshot stale read the whole target list at once."""

    def __init__(self, settings: CollectorSettings, monotonic: Callable[[], float]) -> None:
        self.settings = settings
        self.monotonic = monotonic
        self._domains: frozenset[str] = frozenset()
        self._count = 0
        self._read_at = float("-inf")
        self._lock = threading.Lock()  # guards the three fields above
        self._reading = threading.Lock()  # held by the one thread that reads
        own = urlsplit(settings.public_url).hostname if settings.public_url else None
        self._own = frozenset({own.lower()}) if own else frozenset()

    def _current(self) -> tuple[frozenset[str], int] | None:
        with self._lock:
            if self.monotonic() - self._read_at < TARGETS_TTL:
                return self._domains, self._count
        return None

    def snapshot(self, session: Session, now: datetime) -> tuple[frozenset[str], int]:
        """(the allowed domains, the number of enabled targets)."""
        current = self._current()
        if current is not None:
            return current
        first = self._read_at == float("-inf")
        if not self._reading.acquire(blocking=first):
            with self._lock:  # another thread is reading: the previous snapshot serves
                return self._domains, self._count
        try:
            current = self._current()  # read by the thread this one waited for
            if current is not None:
                return current
            domains, count = self._read(session, now)
            with self._lock:
                self._domains, self._count, self._read_at = domains, count, self.monotonic()
            return domains, count
        finally:
            self._reading.release()

    def _read(self, session: Session, now: datetime) -> tuple[frozenset[str], int]:
        since = now - timedelta(seconds=self.settings.max_age)
        rows = session.execute(
            select(TargetRow.domain, TargetRow.enabled, TargetRow.removed_at).where(
                or_(TargetRow.removed_at.is_(None), TargetRow.removed_at >= since)
            )
        ).all()
        domains = frozenset(r.domain for r in rows) | self._own
        count = sum(1 for r in rows if r.enabled and r.removed_at is None)
        return domains, count


class Admission:
    """One per app: the rate limiter, the quota counters and the target snapshot."""

    def __init__(
        self,
        settings: CollectorSettings,
        limiter: Limiter,
        unverified: Limiter,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.limiter = limiter
        self.unverified = unverified
        self.targets = _Targets(settings, monotonic)
        self._counts: OrderedDict[tuple[str, int], int] = OrderedDict()
        self._lock = threading.Lock()

    def check_rates(self, verified_keys: set[str], items: int) -> None:
        """One request from each verified key's bucket; the shared one when none verified."""
        if not verified_keys:
            if items:
                self.unverified.check(UNVERIFIED)
            return
        for key in sorted(verified_keys):
            self.limiter.check(key)

    def quota(self, target_count: int) -> int:
        return self.settings.measurement_quota or 4 * target_count + 32

    def check_domain(self, domain: str, allowed: frozenset[str]) -> None:
        if domain not in allowed:
            raise Unprocessable(f"{domain} is not a target of this collector", "err_not_a_target")

    def take(self, key_id: str, started_at: datetime, quota: int) -> None:
        """Count one measurement of *key_id* in the interval of *started_at*, or refuse it."""
        bucket = int(started_at.timestamp() // self.settings.measure_interval)
        with self._lock:
            count = self._counts.get((key_id, bucket), 0)
            if count >= quota:
                raise RateLimited(
                    f"this key is over its quota of {quota} measurements per interval",
                    self.settings.measure_interval,
                )
            self._counts[(key_id, bucket)] = count + 1
            self._counts.move_to_end((key_id, bucket))
            while len(self._counts) > MAX_QUOTA_BUCKETS:
                self._counts.popitem(last=False)

    def give_back(self, key_id: str, started_at: datetime) -> None:
        """Uncount a measurement that was not stored after all (a duplicate)."""
        bucket = int(started_at.timestamp() // self.settings.measure_interval)
        with self._lock:
            count = self._counts.get((key_id, bucket), 0)
            if count > 0:
                self._counts[(key_id, bucket)] = count - 1
