"""The durable spool: signed measurements wait here, on disk, until a collector stores them.

Where this sits in the data flow: between signing and submitting. The round
``put``s each envelope (with the measurement id it signed) the moment it is
signed, *before* any attempt to submit it; it submits a ``batch`` (oldest
first) and then ``ack``s what the collector
answered ``accepted`` or ``duplicate`` (durably stored, docs/api.md) and
``reject``s what it refused for good. A process killed anywhere between ``put``
and ``ack`` loses nothing: on restart the items are still here and are submitted
again; the collector answers ``duplicate`` for those it already had.

Storage: ``<state-dir>/spool.db``, SQLite (stdlib) in WAL mode with
``synchronous=FULL`` (every commit is fsynced: a power cut loses nothing that
``put`` returned for), created mode 0600 (SQLite gives its ``-wal`` and ``-shm``
files the database's mode). The signed payload is kept zlib-compressed and is
given back byte for byte (the signature covers those exact bytes). One row per
measurement id: putting the same measurement twice stores it once.

The size bound. ``bytes_used`` counts, per item, the compressed payload, the
signature, the key id, the measurement id and the time; the file on disk is
larger by SQLite's page and index overhead (1.53x, measured with 2,003 items).
Past ``max_bytes`` the OLDEST items are evicted and counted in
``evicted_total`` (persisted, never decreasing: the daemon reports it at
check-in, so that a loss is never silent). The default is sized for a
collector out of reach for 7 days while the probe measures 200 targets every
5 minutes (the default schedule): 200 x 288 x 7 = 403,200 measurements, at
``ITEM_BUDGET`` bytes each:

- measured with the simulated network of the tests (one resolver; A and AAAA
  over UDP and TCP; one address; the decoy and the real TLS handshake; the
  HTTP round trip; a declared network), the signed payload of a reachable
  instance is 3,163 bytes and is stored in 1,176; an SNI-filtered one 2,439
  (1,017 stored), a refused one 1,715 (734 stored);
- a real network makes them bigger (dual stack: a second address and two more
  handshakes; several system resolvers), hence a budget of 2 KiB an item,
  about 1.75x the largest measured: 403,200 x 2,048 = 825,753,600 bytes
  (788 MiB counted, about 1.2 GiB on disk at worst).

Rejections are counted by the collector's error code (``rejected_totals``):
codes only, never a domain or an address.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sqlite3
import stat
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Self

from probe_agent.protocol.envelope import Envelope
from probe_agent.protocol.errors import ProbeError
from probe_agent.protocol.messages import N_
from probe_agent.state.files import FILE_MODE, ensure_state_dir

SPOOL_FILE = "spool.db"
# The database and SQLite's companions: what `wipe` removes of ours.
FILES = (SPOOL_FILE, SPOOL_FILE + "-wal", SPOOL_FILE + "-shm", SPOOL_FILE + "-journal")
SCHEMA_VERSION = 1
TARGETS, ROUNDS_PER_DAY, DAYS = 200, 288, 7  # the default schedule: every 5 minutes
ITEM_BUDGET = 2048  # bytes per stored measurement (see the module docstring)
DEFAULT_MAX_BYTES = TARGETS * ROUNDS_PER_DAY * DAYS * ITEM_BUDGET  # 825,753,600
DEFAULT_BATCH = 100
BUSY_TIMEOUT = 10.0  # seconds: `status` may read while the daemon writes
WAL_LIMIT = 16 * 1024 * 1024  # truncate the -wal file back to this after a checkpoint
MEASUREMENT_ID = re.compile(r"^[A-Za-z0-9-]{8,64}$")  # docs/api.md
ERROR_CODE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
OTHER_CODE = "err_other"
_BYTES, _EVICTED, _REJECTED = "bytes_used", "evicted_total", "rejected:"

log = logging.getLogger("blockwatch.probe.spool")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    measurement_id TEXT NOT NULL UNIQUE,
    measured_at TEXT NOT NULL,
    key_id TEXT NOT NULL,
    payload BLOB NOT NULL,
    signature BLOB NOT NULL,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS items_by_age ON items (measured_at, seq);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class SpoolError(ProbeError):
    """The spool cannot be used (corrupt, unwritable) or an envelope cannot be spooled."""


@dataclass(frozen=True, slots=True)
class SpooledItem:
    """One waiting measurement; ``id`` is what ``ack`` and ``reject`` take."""

    id: int
    measurement_id: str
    measured_at: str
    envelope: Envelope


def spool_exists(directory: Path) -> bool:
    """Whether *directory* holds a spool (``Spool`` would create one)."""
    return (directory / SPOOL_FILE).exists()


def measurement_id_of(envelope: Envelope) -> str:
    """The measurement id inside a signed payload (``{"measurement": {"measurement_id"}}``).

    For a caller holding only the envelope (a benchmark, a test); the round
    knows the id it signed and hands it to ``put``.
    """
    try:
        document = json.loads(envelope.payload)
        mid = document["measurement"]["measurement_id"]
    except (ValueError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise SpoolError("the envelope's payload is not a signed measurement") from exc
    if not isinstance(mid, str) or not MEASUREMENT_ID.match(mid):
        raise SpoolError("the envelope's measurement id is not 8-64 of [A-Za-z0-9-]")
    return mid


def _normalize_time(measured_at: str) -> str:
    """RFC 3339 with a zone, as fixed-width UTC (so that text order is time order)."""
    try:
        when = datetime.fromisoformat(measured_at.replace("Z", "+00:00"))
    except ValueError as exc:
        raise SpoolError("measured_at is not an RFC 3339 time") from exc
    if when.tzinfo is None:
        raise SpoolError("measured_at has no time zone")
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _create_private(path: Path) -> None:
    """Create *path* empty with mode 0600 (before SQLite opens it), or tighten an existing one."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SpoolError(N_("the spool %(path)s is not a regular file"), path=path)
        if stat.S_IMODE(st.st_mode) != FILE_MODE:
            # Measurements say which instances this volunteer measures: owner only.
            log.warning("the spool was mode %04o: set to 0600", stat.S_IMODE(st.st_mode))
            os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


class Spool:
    """The spool of one state directory; a context manager (``close`` on exit)."""

    def __init__(self, state_dir: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        self.path = ensure_state_dir(state_dir) / SPOOL_FILE
        try:
            _create_private(self.path)
            self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
        except OSError as exc:
            raise SpoolError(
                N_("cannot open the spool %(path)s: %(reason)s"),
                path=self.path,
                reason=exc.strerror,
            ) from exc
        try:
            self._setup()
        except sqlite3.Error as exc:
            self._db.close()
            raise SpoolError(
                N_("cannot use the spool %(path)s: %(reason)s"), path=self.path, reason=str(exc)
            ) from exc

    def _setup(self) -> None:
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise SpoolError(N_("the spool cannot use WAL (journal mode %(mode)s)"), mode=mode)
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise SpoolError(N_("the spool is of a newer version (%(version)s)"), version=version)
        with self._transaction():
            for statement in filter(str.strip, _SCHEMA.split(";")):
                self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    # -- plumbing ---------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE .. COMMIT (ROLLBACK on any error): one writer at a time."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def _add(self, name: str, delta: int) -> None:
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            (name, delta),
        )

    def _delete(self, ids: Iterable[int]) -> int:
        """Delete the rows *ids* (inside a transaction); the number actually deleted."""
        deleted = freed = 0
        for seq in ids:
            row = self._db.execute("DELETE FROM items WHERE seq = ? RETURNING size", (seq,))
            found = row.fetchone()
            if found is not None:
                deleted, freed = deleted + 1, freed + int(found[0])
        if freed:
            self._add(_BYTES, -freed)
        return deleted

    def _evict(self) -> int:
        """Delete the oldest items until the spool fits ``max_bytes``; how many went."""
        excess = self._counter(_BYTES) - self.max_bytes
        victims: list[int] = []
        rows = self._db.execute("SELECT seq, size FROM items ORDER BY measured_at, seq")
        for seq, size in rows:
            if excess <= 0:
                break
            victims.append(int(seq))
            excess -= int(size)
        rows.close()
        evicted = self._delete(victims)
        if evicted:
            self._add(_EVICTED, evicted)
            log.warning("spool full: evicted the %d oldest measurement(s)", evicted)
        return evicted

    # -- the API ------------------------------------------------------------------

    def put(self, envelope: Envelope, measured_at: str, measurement_id: str) -> None:
        """Store *envelope* durably (fsynced when this returns); a known measurement id: no-op.

        *measurement_id* is the one inside the signed payload: the caller signed
        it, so the payload is not parsed again here.
        """
        if not MEASUREMENT_ID.match(measurement_id):
            raise SpoolError("the measurement id is not 8-64 of [A-Za-z0-9-]")
        mid = measurement_id
        when = _normalize_time(measured_at)
        payload = zlib.compress(envelope.payload, 6)
        size = len(payload) + len(envelope.signature) + len(envelope.key_id) + len(mid) + len(when)
        try:
            with self._transaction():
                cursor = self._db.execute(
                    "INSERT INTO items (measurement_id, measured_at, key_id, payload, signature, "
                    "size) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (measurement_id) DO NOTHING",
                    (mid, when, envelope.key_id, payload, envelope.signature, size),
                )
                if cursor.rowcount:
                    self._add(_BYTES, size)
                    self._evict()
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot write to the spool: {exc}") from exc

    def batch(self, limit: int = DEFAULT_BATCH) -> list[SpooledItem]:
        """Up to *limit* waiting items, oldest first (they stay until acked or rejected)."""
        rows = self._db.execute(
            "SELECT seq, measurement_id, measured_at, key_id, payload, signature FROM items "
            "ORDER BY measured_at, seq LIMIT ?",
            (limit,),
        ).fetchall()
        items = []
        for seq, mid, when, key_id, payload, signature in rows:
            try:
                raw = zlib.decompress(payload)
            except zlib.error as exc:
                raise SpoolError(f"the spooled item {seq} is corrupt") from exc
            items.append(SpooledItem(seq, mid, when, Envelope(key_id, raw, bytes(signature))))
        return items

    def ack(self, ids: Iterable[int]) -> int:
        """Forget items the collector stored (``accepted`` or ``duplicate``); how many went."""
        with self._transaction():
            return self._delete(ids)

    def reject(self, ids: Iterable[int], code: str) -> int:
        """Forget items the collector refused for good, counted under its error *code*."""
        key = _REJECTED + (code if ERROR_CODE.match(code) else OTHER_CODE)
        with self._transaction():
            deleted = self._delete(ids)
            if deleted:
                self._add(key, deleted)
        return deleted

    def depth(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM items").fetchone()[0])

    def bytes_used(self) -> int:
        return self._counter(_BYTES)

    def evicted_total(self) -> int:
        return self._counter(_EVICTED)

    def rejected_totals(self) -> dict[str, int]:
        rows = self._db.execute(
            "SELECT name, value FROM counters WHERE name LIKE ? ORDER BY name", (_REJECTED + "%",)
        )
        return {str(name)[len(_REJECTED) :]: int(value) for name, value in rows}

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
