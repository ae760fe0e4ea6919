#!/usr/bin/env python3
"""Benchmark the detector's pass at scale: new measurements in, verdicts and events out.

The requirement: one detection pass over 1,000 targets x 200 probes with 10
million stored measurements; its cost must grow with the new measurements, not
with the history. This script builds that database on the local PostgreSQL
(``blockwatch_bench_detection``, dropped and re-created, migrated with
``collector.core.db.migrate``) and times ``Detector.run_pass`` side by side, in one
run, on the same new work with four stored histories:

- ``empty``: nothing stored (a collector's first pass);
- ``recent``: the last 20 minutes only, at the full rate (4 measurement
  intervals, 804,000 measurements): what a pass may read by design (the
  detector's window, the control window, the residual-trigger window);
- ``history``: ``--history`` measurements (10,000,000, about 4 h 10 min at the
  full rate), all older than 20 minutes: nothing a pass should read;
- ``history+recent``: both, the steady state of a collector.

The new work (``--new``): 10,000 probe measurements (one detector interval,
15 s, of 200 probes x 1,000 targets every 300 s) with every history, and
40,000 with the empty and the full one, with their ``analysis_queue`` rows and a
control measurement of each domain taken just after. History rows are generated
inside PostgreSQL (``INSERT ... SELECT``, two connections) with their verdicts;
the detector's state for a history (detector_states, events, network_states)
comes from the real machine. Reported: time per pass and per new measurement,
ratios between histories and sizes, where the pass's time went (its steps and
its SQL statements), and the rows and buffers it read from ``measurements`` and
``verdicts`` (``pg_stat_user_tables``, ``pg_statio_user_tables``). Every pass is
checked: a verdict for each new measurement with the expected flags, events only
where blocks were planned.

Everything runs on 127.0.0.1. Results: tables on stdout and
``bench/results/detection-<UTC timestamp>.json``. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import random
import re
import shlex
import signal
import statistics
import sys
import threading
import time
import uuid
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from rich import box
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine, event

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(REPO))  # run as a script: make the project's packages importable

from procstat import cpu_seconds, machine_busy_seconds  # noqa: E402

from collector.analysis import RULES_VERSION, Context, analyze, sni_triggers  # noqa: E402
from collector.core.db import make_engine, make_session_factory, migrate, session_scope  # noqa: E402
from collector.core.models import pack_payload  # noqa: E402
from collector.core.settings import CollectorSettings  # noqa: E402
from collector.detection.passes import Detector, PassStats  # noqa: E402
from collector.services.ingest import COLUMNS as INGEST_COLUMNS  # noqa: E402
from tests.collector.analysis import builders as b  # noqa: E402

RESULTS_DIR = BENCH_DIR / "results"
HOST = "127.0.0.1"
PG_ADMIN = f"host={HOST} port=5432 user=postgres dbname=postgres"
DEFAULT_DATABASE = "blockwatch_bench_detection"
UTC = dt.UTC

TARGETS = 1000
# (country, ASN, probes): 200 probes in 10 networks of 3 countries.
NETWORKS = (
    ("CN", 4134, 40),
    ("CN", 4837, 30),
    ("CN", 9808, 20),
    ("CN", 56040, 10),
    ("CN", 4812, 10),
    ("CN", 17621, 10),
    ("IR", 58224, 25),
    ("IR", 44244, 15),
    ("RU", 12389, 25),
    ("RU", 8359, 15),
)
PROBES = sum(n for _, _, n in NETWORKS)
PER_INTERVAL = PROBES * TARGETS  # probe measurements per measurement interval
ROWS_PER_INTERVAL = PER_INTERVAL + TARGETS  # and one control measurement per target
RECENT_INTERVALS = 4  # 20 minutes: the window (15 min) plus the control window's reach
CONTROL_PROBE = "control-collector"  # as collector/detection/control.py names the control vantage
CONTROL_KEY = "c" * 64
CONTROL_PAYLOADS = 1000  # bench.payload keys of the control documents: 1000 + target
TLDS = ("social", "online", "xyz", "bar", "cloud", "net")
# The history ends here and the new work starts here (a fixed clock: reproducible).
END = dt.datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
RECEIVE_DELAY = 5.0  # seconds from a measurement's start to its arrival
CONTROL_AFTER = 2.0  # seconds from a domain's last new measurement to its control
CONTROL_BUCKET = 60.0  # seconds: the new work has a control per domain and minute
PASS_DELAY = 10.0  # seconds from the last arrival to the pass

# Measurement patterns: what a probe in a network sees of a target.
OK, SNI_DNS, SNI, DNS_FORGED, TCP_IP, DOWN = range(6)
PATTERN_NAMES = ("ok", "sni+dns", "sni", "dns forged", "tcp/ip", "down")
DOWN_DOMAINS = range(990, 995)  # instances that are down (the control fails too)

console = Console(width=None if sys.stdout.isatty() else 160)


class BenchFailure(RuntimeError):
    """A pass that did not do its work: the run is invalid."""


@dataclass(frozen=True)
class FixedClock:
    """The collector's Clock protocol, stopped at one instant."""

    at: dt.datetime

    def now(self) -> dt.datetime:
        return self.at


# ------------------------------------------------------------------ the world


@dataclass(frozen=True)
class Probe:
    n: int
    probe_id: str
    key_id: str
    cc: str
    asn: int
    offset: int  # where in the target list the probe's round starts


def domain_name(d: int) -> str:
    return f"inst{d:04d}.{TLDS[d % len(TLDS)]}"


def instance_ip(d: int) -> str:
    return f"45.76.{d // 250}.{d % 250 + 1}"


def instance_ip6(d: int) -> str:
    return f"2a01:4f8:c0c:{d:x}::2"


def pattern_of(cc: str, asn: int, d: int) -> int:
    """The censorship the bench plans: steady blocks, national and regional, and outages."""
    if d in DOWN_DOMAINS:
        return DOWN
    if cc == "CN" and d < 50:
        return SNI_DNS  # national: forged DNS answers and SNI resets
    if asn == 4134 and 50 <= d < 60:
        return SNI  # regional: one network resets the handshake
    if asn == 58224 and 100 <= d < 140:
        return DNS_FORGED  # regional: one network forges answers
    if cc == "RU" and 200 <= d < 210:
        return TCP_IP  # national: the instance's address is dropped
    return OK


def make_probes(seed: int) -> list[Probe]:
    rng = random.Random(seed)  # test data, not secrets
    probes: list[Probe] = []
    for cc, asn, count in NETWORKS:
        for _ in range(count):
            n = len(probes)
            probes.append(
                Probe(n, f"bench{n:04d}", rng.randbytes(32).hex(), cc, asn, rng.randrange(TARGETS))
            )
    return probes


def _certificate(name: str) -> dict[str, Any]:
    return {
        "subject": f"CN={name}",
        "issuer": "CN=R11,O=Let's Encrypt,C=US",
        "sans": [name, f"www.{name}"],
        "sha256": zlib.crc32(name.encode()).to_bytes(4).hex() * 16,
        "not_before": "2026-09-30T00:00:00Z",
        "not_after": "2026-12-29T23:59:59Z",
        "chain_length": 2,
    }


def _enrich(m: dict[str, Any]) -> dict[str, Any]:
    """A builders' measurement made like the probe's: A and AAAA, UDP and TCP, certificates."""
    dns = []
    for step in m["dns"]:
        dns.append(step)
        answers = [b.REAL_IP] if step["answers"] or step["failure"] is None else []
        over_tcp = b.dns(*answers, transport="tcp") if answers else dict(step, transport="tcp")
        dns.append(over_tcp)
    for transport in ("udp", "tcp"):
        dns.append(b.dns("2a01:4f8:c0c:0::2", query_type="AAAA", transport=transport))
    m["dns"] = dns
    for step in m["tls"]:
        if step["failure"] is None:
            step["certificate"] = _certificate(b.DOMAIN)
    return m


def base_measurement(pattern: int) -> dict[str, Any]:
    """The pattern's measurement for builders' domain and address (rewritten per target)."""
    if pattern == OK:
        m = b.reached()
    elif pattern == SNI_DNS:
        m = b.measurement(
            dns_steps=[b.dns(b.FORGED_IP, late=(b.REAL_IP,), agree=False)],
            tcp_steps=[b.tcp()],
            tls_steps=b.handshakes(failure="connection_reset"),
        )
    elif pattern == SNI:
        m = b.measurement(
            dns_steps=[b.dns(b.REAL_IP)],
            tcp_steps=[b.tcp()],
            tls_steps=b.handshakes(failure="connection_reset"),
        )
    elif pattern == DNS_FORGED:
        m = b.measurement(
            dns_steps=[b.dns(b.FORGED_IP)],
            tcp_steps=[b.tcp(b.FORGED_IP, failure="generic_timeout_error")],
        )
    elif pattern == TCP_IP:
        m = b.measurement(
            dns_steps=[b.dns(b.REAL_IP)], tcp_steps=[b.tcp(failure="generic_timeout_error")]
        )
    else:
        m = b.measurement(
            dns_steps=[b.dns(b.REAL_IP)], tcp_steps=[b.tcp(failure="connection_refused")]
        )
    return _enrich(m)


def _for_domain(m: dict[str, Any], d: int) -> dict[str, Any]:
    text = json.dumps(m)
    text = text.replace(f'"{b.REAL_IP}"', f'"{instance_ip(d)}"')
    text = text.replace('"2a01:4f8:c0c:0::2"', f'"{instance_ip6(d)}"')
    text = text.replace(b.DOMAIN, domain_name(d))
    out: dict[str, Any] = json.loads(text)
    return out


class World:
    """Probes, targets, the planned censorship, and measurement documents."""

    def __init__(self, seed: int) -> None:
        self.probes = make_probes(seed)
        self.plan = [
            [pattern_of(p.cc, p.asn, d) for d in range(TARGETS)] for p in self.probes
        ]  # plan[probe][domain]
        self._bases = {pat: base_measurement(pat) for pat in range(len(PATTERN_NAMES))}
        self._docs: dict[tuple[int, int], dict[str, Any]] = {}
        self.expected = self._expected_verdicts()
        self.blocked_keys = {
            (domain_name(d), p.cc)
            for p in self.probes
            for d in range(TARGETS)
            if self.plan[p.n][d] not in (OK, DOWN)
        }

    def measurement(self, pattern: int, d: int) -> dict[str, Any]:
        """A probe's measurement of target *d* (shared: copy it before editing)."""
        key = (pattern, d)
        if key not in self._docs:
            self._docs[key] = _for_domain(self._bases[pattern], d)
        return self._docs[key]

    def control(self, d: int) -> dict[str, Any]:
        key = (-1, d)
        if key not in self._docs:
            base = b.failed_control("connection_refused") if d in DOWN_DOMAINS else b.control()
            self._docs[key] = _for_domain(_enrich(base), d)
        return self._docs[key]

    def _expected_verdicts(self) -> dict[int, dict[str, Any]]:
        """Each pattern's verdict (``analyze``, as the pass calls it) and its SNI trigger offset."""
        ctx = Context()
        out = {}
        for pattern in range(len(PATTERN_NAMES)):
            d = next(d for d in range(TARGETS) for p in self.probes if self.plan[p.n][d] == pattern)
            m = dict(self.measurement(pattern, d), started_at=b.STARTED_TEXT)
            verdict = analyze(m, [self.control(d)], ctx)
            triggers = sni_triggers(m)
            out[pattern] = {
                "flags": ",".join(sorted(verdict.flags)),
                "blocked": verdict.blocked,
                "reasons": json.dumps(list(verdict.reasons)),
                "trigger_s": (triggers[0].at - b.STARTED).total_seconds() if triggers else None,
            }
        return out


def signed_payload(measurement: dict[str, Any], cc: str, asn: int) -> bytes:
    """What ingestion stores: the signed JSON document's exact bytes, packed."""
    document = {
        "signed_at": measurement["started_at"],
        "measurement": measurement,
        "declared": {"cc": cc, "asn": asn} if asn else None,
        "via_proxy": False,
    }
    raw = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
    return pack_payload(raw)


def rfc3339(when: dt.datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def naive(when: dt.datetime) -> dt.datetime:
    return when.astimezone(UTC).replace(tzinfo=None)  # as the UTCDateTime columns store it


# ------------------------------------------------------------------ new work


@dataclass
class NewWork:
    """One detector interval's worth of new submissions, built once and inserted per round."""

    size: int
    rows: list[tuple[Any, ...]]  # measurements rows (COPY order of NEW_COLUMNS)
    controls: int
    span_s: float  # from the first new measurement to the last
    now: dt.datetime  # the pass's clock
    build_s: float
    payload_bytes_mean: float


# The columns ingestion writes, in its order (COPY uses the same list).
NEW_COLUMNS = INGEST_COLUMNS


def slot(world: World, j: int) -> tuple[Probe | None, int, float]:
    """Row *j* of a measurement interval: (probe or None for the control, target, offset s).

    Probe n measures the targets in order from its offset, the 200 probes in turn,
    one measurement every 1.5 ms (200,000 per 300 s); then the control vantage
    measures every target, 0.3 s apart.
    """
    if j < PER_INTERVAL:
        probe = world.probes[j % PROBES]
        return probe, (probe.offset + j // PROBES) % TARGETS, j * 300.0 / PER_INTERVAL
    return None, j - PER_INTERVAL, (j - PER_INTERVAL) * 0.3 + 0.1


def build_new_work(world: World, size: int, seed: int) -> NewWork:
    """*size* probe measurements continuing the schedule after END, then the controls.

    Probe n measures the targets in order from its offset, one every 1.5 ms
    across the 200 probes (200,000 per 300 s): 10,000 new measurements span 15 s.
    The control vantage measures each domain 2 s after the domain's last
    measurement of every minute (CONTROL_BUCKET): a measurement that looks
    blocked needs a control taken after it, within the control window.
    """
    started = time.perf_counter()
    rng = random.Random(seed)  # test data, not secrets
    rows: list[tuple[Any, ...]] = []
    last: dict[tuple[int, int], dt.datetime] = {}  # (domain, minute) -> last measurement
    sizes = []
    for j in range(size):
        k, jj = divmod(j, PER_INTERVAL)
        probe, d, offset = slot(world, jj)
        assert probe is not None
        at = END + dt.timedelta(seconds=k * 300.0 + offset)
        mid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        m = dict(world.measurement(world.plan[probe.n][d], d), measurement_id=mid)
        m["started_at"] = rfc3339(at)
        payload = signed_payload(m, probe.cc, probe.asn)
        sizes.append(len(payload))
        received = at + dt.timedelta(seconds=RECEIVE_DELAY)
        rows.append(
            (mid, probe.probe_id, probe.key_id, domain_name(d), naive(at), naive(received),
             probe.cc, probe.asn, "geolocated", "probe", "[]", payload, rng.randbytes(64))
        )  # fmt: skip
        last[(d, int((at - END).total_seconds() // CONTROL_BUCKET))] = at
    for (d, _), at in sorted(last.items()):
        when = at + dt.timedelta(seconds=CONTROL_AFTER)
        mid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        m = dict(world.control(d), measurement_id=mid, started_at=rfc3339(when))
        rows.append(
            (mid, CONTROL_PROBE, CONTROL_KEY, domain_name(d), naive(when),
             naive(when + dt.timedelta(seconds=RECEIVE_DELAY)), "ZZ", 0, "declared", "control",
             "[]", signed_payload(m, "ZZ", 0), rng.randbytes(64))
        )  # fmt: skip
    latest = max(last.values())
    span = (latest - END).total_seconds()
    now = latest + dt.timedelta(seconds=CONTROL_AFTER + RECEIVE_DELAY + PASS_DELAY)
    return NewWork(
        size=size,
        rows=rows,
        controls=len(last),
        span_s=span,
        now=now,
        build_s=time.perf_counter() - started,
        payload_bytes_mean=statistics.fmean(sizes),
    )


# ------------------------------------------------------------------ the database


def dsn(database: str) -> str:
    return f"host={HOST} port=5432 user=postgres dbname={database}"


def sqlalchemy_url(database: str) -> str:
    return f"postgresql+psycopg://postgres@{HOST}:5432/{database}"


def recreate_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=10) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')


def drop_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=10) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


BENCH_SCHEMA = """
CREATE SCHEMA bench;
CREATE TABLE bench.probe (p int PRIMARY KEY, probe_id text, key_id text, cc text, asn bigint,
                          "offset" int);
CREATE TABLE bench.domain (d int PRIMARY KEY, name text, ip text);
CREATE TABLE bench.plan (p int, d int, pattern int, PRIMARY KEY (p, d));
CREATE TABLE bench.pattern (pattern int PRIMARY KEY, flags text, blocked boolean, reasons text,
                            trigger_s double precision);
CREATE TABLE bench.payload (payload_key int PRIMARY KEY, payload bytea);
CREATE TABLE bench.grid (j int PRIMARY KEY, role text, probe_id text, key_id text, domain text,
                         ip text, cc text, asn bigint, network_source text,
                         offset_s double precision, pattern int, d int, payload_key int);
CREATE FUNCTION bench.mid(bigint) RETURNS text LANGUAGE sql IMMUTABLE
    AS $$ SELECT (lpad(to_hex($1), 12, '0') || substr(md5('bench' || $1), 13))::uuid::text $$;
"""
# The tables the history fills, and whose use by the pass is counted.
BIG_TABLES = ("measurements", "verdicts")
STATE_TABLES = ("events", "event_changes", "detector_states", "network_states")


def setup_database(database: str, world: World, history: int) -> None:
    """Schema (the collector's migrations), probes and keys, targets, the bench's own tables.

    The id sequences start after the history: new work gets ids above it in every phase.
    """
    engine = make_engine(sqlalchemy_url(database))
    try:
        migrate(engine)
    finally:
        engine.dispose()
    created = naive(END - dt.timedelta(days=30))
    with psycopg.connect(dsn(database)) as conn, conn.cursor() as cur:
        for table in (*BIG_TABLES, "analysis_queue", *STATE_TABLES):
            # The server's autovacuum is off here; keep it off for these tables anyway:
            # nothing may run in the background of a timed pass.
            cur.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
        probes = [(CONTROL_PROBE, "control", "ZZ", 0)] + [
            (p.probe_id, "probe", p.cc, p.asn) for p in world.probes
        ]
        cur.executemany(
            "INSERT INTO probes (id, status, role, declared_cc, declared_asn, created_at, "
            "approved_at, last_cc, last_asn, last_network_source, spool_depth, evicted_total) "
            "VALUES (%s, 'active', %s, %s, %s, %s, %s, %s, %s, 'geolocated', 0, 0)",
            [(pid, role, cc, asn, created, created, cc, asn) for pid, role, cc, asn in probes],
        )
        keys = [(CONTROL_KEY, CONTROL_PROBE)] + [(p.key_id, p.probe_id) for p in world.probes]
        cur.executemany(
            "INSERT INTO probe_keys (key_id, probe_id, public_key, status, created_at) "
            "VALUES (%s, %s, %s, 'active', %s)",
            [(kid, pid, bytes.fromhex(kid[:64])[:32], created) for kid, pid in keys],
        )
        cur.execute("INSERT INTO target_groups (name) VALUES ('bench') RETURNING id")
        group = cur.fetchone()
        cur.executemany(
            "INSERT INTO targets (domain, group_id, kind, enabled, source, added_at) "
            "VALUES (%s, %s, 'primary', true, 'bench', %s)",
            [(domain_name(d), group[0] if group else None, created) for d in range(TARGETS)],
        )
        cur.execute(BENCH_SCHEMA)
        cur.executemany(
            'INSERT INTO bench.probe (p, probe_id, key_id, cc, asn, "offset") '
            "VALUES (%s, %s, %s, %s, %s, %s)",
            [(p.n, p.probe_id, p.key_id, p.cc, p.asn, p.offset) for p in world.probes],
        )
        cur.executemany(
            "INSERT INTO bench.domain (d, name, ip) VALUES (%s, %s, %s)",
            [(d, domain_name(d), instance_ip(d)) for d in range(TARGETS)],
        )
        with cur.copy("COPY bench.plan (p, d, pattern) FROM STDIN") as copy:
            for p in world.probes:
                for d in range(TARGETS):
                    copy.write_row((p.n, d, world.plan[p.n][d]))
        cur.executemany(
            "INSERT INTO bench.pattern (pattern, flags, blocked, reasons, trigger_s) "
            "VALUES (%s, %s, %s, %s, %s)",
            [
                (pattern, e["flags"], e["blocked"], e["reasons"], e["trigger_s"])
                for pattern, e in world.expected.items()
            ],
        )
        # History payloads: one realistic document per pattern (the pass never reads a
        # stored probe measurement again: that is the property measured), and one
        # control document per target (the pass does read the recent controls).
        started = rfc3339(END)
        payloads = []
        for pattern in world.expected:
            d = next(
                d for d in range(TARGETS) for p in world.probes if world.plan[p.n][d] == pattern
            )
            m = dict(world.measurement(pattern, d), started_at=started)
            m["measurement_id"] = str(uuid.UUID(int=pattern + 1, version=4))
            payloads.append((pattern, signed_payload(m, "CN", 4134)))
        for d in range(TARGETS):
            m = dict(world.control(d), started_at=started)
            m["measurement_id"] = str(uuid.UUID(int=CONTROL_PAYLOADS + d, version=4))
            payloads.append((CONTROL_PAYLOADS + d, signed_payload(m, "ZZ", 0)))
        cur.executemany(
            "INSERT INTO bench.payload (payload_key, payload) VALUES (%s, %s)", payloads
        )
        with cur.copy(
            "COPY bench.grid (j, role, probe_id, key_id, domain, ip, cc, asn, network_source, "
            "offset_s, pattern, d, payload_key) FROM STDIN"
        ) as copy:
            for j in range(ROWS_PER_INTERVAL):
                probe, d, offset = slot(world, j)
                if probe is None:
                    copy.write_row(
                        (j, "control", CONTROL_PROBE, CONTROL_KEY, domain_name(d), instance_ip(d),
                         "ZZ", 0, "declared", offset, None, d, CONTROL_PAYLOADS + d)
                    )  # fmt: skip
                else:
                    pattern = world.plan[probe.n][d]
                    copy.write_row(
                        (j, "probe", probe.probe_id, probe.key_id, domain_name(d), instance_ip(d),
                         probe.cc, probe.asn, "geolocated", offset, pattern, d, pattern)
                    )  # fmt: skip
        cur.execute("ANALYZE bench.probe, bench.domain, bench.plan, bench.pattern, bench.grid")
        if history:
            cur.execute("SELECT setval('measurements_id_seq', %s)", (history,))
            cur.execute("SELECT setval('verdicts_id_seq', %s)", (history,))


# Row i of the history (0 = oldest) sits at position q = i + skip of a grid of
# intervals (300 s) of 201,000 rows: 200,000 probe measurements then a control
# per target (bench.grid: one interval, as ``slot`` lays it out). The grid ends
# at END; ids are i + 1. Each statement fills part [jlo, jhi) of interval k.
_I = f"(%(k)s::bigint * {ROWS_PER_INTERVAL} + g.j - %(skip)s)"
_T = "(%(t0)s::timestamp + make_interval(secs => %(k)s * 300.0 + g.offset_s))"
INSERT_MEASUREMENTS = f"""
INSERT INTO measurements (id, measurement_id, probe_id, key_id, domain, started_at, received_at,
                          cc, asn, network_source, role, hints, payload, signature)
SELECT {_I} + 1, bench.mid({_I}), g.probe_id, g.key_id, g.domain, {_T},
       {_T} + make_interval(secs => {RECEIVE_DELAY} + mod(g.j, 50)),
       g.cc, g.asn, g.network_source, g.role, '[]', pl.payload, sha512(int8send({_I}))
FROM bench.grid AS g JOIN bench.payload AS pl USING (payload_key)
WHERE g.j >= %(jlo)s AND g.j < %(jhi)s
"""

# A verdict per probe measurement, as the pass writes it (json.dumps spacing included),
# naming the control of its domain in the same interval.
INSERT_VERDICTS = f"""
INSERT INTO verdicts (id, measurement_pk, measurement_id, probe_id, domain, cc, asn, started_at,
                      flags, blocked, reasons, triggers, controls, rule_version, analyzed_at)
SELECT {_I} + 1, {_I} + 1, bench.mid({_I}), g.probe_id, g.domain, g.cc, g.asn, {_T},
       pt.flags, pt.blocked, pt.reasons,
       CASE WHEN pt.trigger_s IS NULL THEN '[]' ELSE
            '[["' || g.ip || '", 443, "' || to_char({_T} + make_interval(secs => pt.trigger_s),
            'YYYY-MM-DD"T"HH24:MI:SS.US') || '+00:00"]]' END,
       '["' || bench.mid(%(k)s::bigint * {ROWS_PER_INTERVAL} + {PER_INTERVAL} + g.d - %(skip)s)
            || '"]',
       '{RULES_VERSION}', {_T} + interval '30 seconds'
FROM bench.grid AS g JOIN bench.pattern AS pt USING (pattern)
WHERE g.j >= %(jlo)s AND g.j < %(jhi)s AND g.role = 'probe'
"""


@dataclass
class History:
    rows: int  # --history
    skip: int  # empty grid positions before row 0 (the oldest interval is partial)
    t0: dt.datetime  # start of the oldest interval

    @classmethod
    def of(cls, rows: int) -> History:
        intervals = -(-rows // ROWS_PER_INTERVAL)
        return cls(
            rows=rows,
            skip=intervals * ROWS_PER_INTERVAL - rows,
            t0=END - dt.timedelta(seconds=intervals * 300.0),
        )


def _load_part(database: str, history: History, statement: str, k: int, jlo: int, jhi: int) -> int:
    with psycopg.connect(dsn(database)) as conn:
        # Bulk load only: the history is consistent by construction, so the per-row
        # foreign-key triggers are skipped (the constraints themselves stay).
        conn.execute("SET session_replication_role = replica")
        conn.execute("SET synchronous_commit = off")
        conn.execute("SET jit = off")
        params = {"t0": naive(history.t0), "skip": history.skip, "k": k, "jlo": jlo, "jhi": jhi}
        return conn.execute(statement, params).rowcount


def load_history(database: str, history: History, lo: int, hi: int) -> dict[str, float]:
    """Rows [lo, hi) of the history and their verdicts; then VACUUM ANALYZE. Seconds per step.

    Two connections, each inserting half an interval at a time. The indexes stay:
    the history's measurement ids are time-ordered (the unique index grows at its
    end) and the other indexes take the rows in time order.
    """
    timings: dict[str, float] = {}
    started = time.perf_counter()
    jobs = []
    half = ROWS_PER_INTERVAL // 2
    q, end = lo + history.skip, hi + history.skip
    while q < end:
        k, jlo = divmod(q, ROWS_PER_INTERVAL)
        jhi = min(jlo + half, ROWS_PER_INTERVAL, end - k * ROWS_PER_INTERVAL)
        jobs += [(statement, k, jlo, jhi) for statement in (INSERT_MEASUREMENTS, INSERT_VERDICTS)]
        q = k * ROWS_PER_INTERVAL + jhi
    inserted: dict[str, int] = defaultdict(int)
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [(job[0], pool.submit(_load_part, database, history, *job)) for job in jobs]
        for statement, future in futures:
            inserted[statement] += future.result()
    measurements, verdicts = inserted[INSERT_MEASUREMENTS], inserted[INSERT_VERDICTS]
    expected_verdicts = sum(
        max(0, min(jhi, PER_INTERVAL) - jlo)
        for statement, _, jlo, jhi in jobs
        if statement == INSERT_MEASUREMENTS
    )
    if measurements != hi - lo or verdicts != expected_verdicts:
        raise BenchFailure(
            f"history rows {lo:,}..{hi:,}: {measurements:,} measurements and {verdicts:,} "
            f"verdicts inserted, expected {hi - lo:,} and {expected_verdicts:,}"
        )
    timings["insert_s"] = time.perf_counter() - started
    step = time.perf_counter()
    with psycopg.connect(dsn(database), autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) measurements, verdicts")
    timings["vacuum_analyze_s"] = time.perf_counter() - step
    timings["total_s"] = time.perf_counter() - started
    return timings


def build_history_state(
    database: str, settings: CollectorSettings, at: dt.datetime, quiet_until: dt.datetime
) -> float:
    """The detector's state at *at* (the end of the stored history) for every (domain, country).

    When the history ends before the new work starts (*quiet_until*), a pass
    (nothing to analyze) then runs at that time: the detector kept running while
    nothing arrived, and the stored votes have aged out of its window.

    As the last pass before the new work left it: detector_states, open events
    (with their opening changes) and network_states, from the verdicts in the
    window. Uses the pass's detection step directly (every key evaluated).
    """
    started = time.perf_counter()
    engine = make_engine(sqlalchemy_url(database))
    try:
        sessions = make_session_factory(engine)
        # The machine counts each probe's latest verdict: in this schedule the last
        # interval holds one of every probe for every target, so a window of one
        # interval gives the same ballots at a third of the reading.
        narrow = settings.model_copy(update={"detect_window": 300.0})
        detector = Detector(narrow, FixedClock(at))
        with psycopg.connect(dsn(database)) as conn:
            keys = {
                (domain, cc)
                for domain, cc in conn.execute(
                    "SELECT DISTINCT domain, cc FROM verdicts WHERE started_at >= %s",
                    (naive(at - dt.timedelta(seconds=narrow.window_seconds)),),
                )
            }
        with session_scope(sessions) as session:
            detector._detect(session, at, keys)
        if quiet_until > at:
            Detector(settings, FixedClock(quiet_until)).run_pass(sessions)
    finally:
        engine.dispose()
    return time.perf_counter() - started


def snapshot_state(database: str) -> None:
    with psycopg.connect(dsn(database)) as conn:
        for table in STATE_TABLES:
            conn.execute(f"DROP TABLE IF EXISTS bench.snap_{table}")
            conn.execute(f"CREATE TABLE bench.snap_{table} AS SELECT * FROM {table}")


def reset(database: str, base_id: int) -> float:
    """Undo a pass and its new work: back to the history and its state. Returns seconds."""
    started = time.perf_counter()
    with psycopg.connect(dsn(database)) as conn:
        conn.execute("DELETE FROM analysis_queue WHERE measurement_pk > %s", (base_id,))
        conn.execute("DELETE FROM verdicts WHERE measurement_pk > %s", (base_id,))
        conn.execute("DELETE FROM measurements WHERE id > %s", (base_id,))
        conn.execute("TRUNCATE " + ", ".join(STATE_TABLES))
        for table in ("events", "event_changes", "detector_states", "network_states"):
            conn.execute(f"INSERT INTO {table} SELECT * FROM bench.snap_{table}")
    with psycopg.connect(dsn(database), autocommit=True) as conn:
        conn.execute("VACUUM measurements, verdicts, analysis_queue, " + ", ".join(STATE_TABLES))
    return time.perf_counter() - started


def insert_new_work(database: str, work: NewWork, base_id: int, analyze_all: bool) -> float:
    """The new measurements (COPY), their queue rows as ingestion makes them. Returns seconds."""
    started = time.perf_counter()
    with psycopg.connect(dsn(database)) as conn, conn.cursor() as cur:
        columns = ", ".join(NEW_COLUMNS)
        with cur.copy(f"COPY measurements ({columns}) FROM STDIN") as copy:
            for row in work.rows:
                copy.write_row(row)
        cur.execute(
            "INSERT INTO analysis_queue (measurement_pk, not_before) SELECT id, received_at "
            "FROM measurements WHERE id > %s AND role <> 'control'",
            (base_id,),
        )
        queued = cur.rowcount
        if queued != work.size:
            raise BenchFailure(f"queued {queued} new measurements, expected {work.size}")
    with psycopg.connect(dsn(database), autocommit=True) as conn:
        conn.execute("ANALYZE" if analyze_all else "ANALYZE analysis_queue")
    return time.perf_counter() - started


def table_counters(database: str) -> dict[str, dict[str, int]]:
    """pg_stat/pg_statio counters of the big tables (rows and pages read so far)."""
    out: dict[str, dict[str, int]] = {}
    with psycopg.connect(dsn(database)) as conn:
        for table in BIG_TABLES:
            row = conn.execute(
                "SELECT coalesce(s.seq_scan, 0), coalesce(s.seq_tup_read, 0), "
                "coalesce(s.idx_scan, 0), coalesce(s.idx_tup_fetch, 0), "
                "coalesce(io.heap_blks_read, 0) + coalesce(io.heap_blks_hit, 0), "
                "coalesce(io.idx_blks_read, 0) + coalesce(io.idx_blks_hit, 0), "
                "coalesce(io.toast_blks_read, 0) + coalesce(io.toast_blks_hit, 0) "
                "FROM pg_stat_user_tables s JOIN pg_statio_user_tables io USING (relid) "
                "WHERE s.relname = %s",
                (table,),
            ).fetchone()
            names = (
                "seq_scan",
                "seq_tup_read",
                "idx_scan",
                "idx_tup_fetch",
                "heap_blks",
                "idx_blks",
                "toast_blks",
            )
            out[table] = dict(zip(names, (int(v) for v in row or (0,) * 7), strict=True))
    return out


def table_sizes(database: str) -> dict[str, dict[str, int]]:
    out = {}
    with psycopg.connect(dsn(database)) as conn:
        for table in (*BIG_TABLES, "analysis_queue", *STATE_TABLES):
            row = conn.execute(
                "SELECT (SELECT count(*) FROM " + table + "), pg_table_size(%s::regclass), "
                "pg_indexes_size(%s::regclass)",
                (table, table),
            ).fetchone()
            if row:
                out[table] = {"rows": row[0], "table_bytes": row[1], "index_bytes": row[2]}
    return out


# ------------------------------------------------------------------ where the time goes


def parent_pid(pid: int) -> int:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return int(raw[raw.rindex(")") + 2 :].split()[1])


class WorkerSampler:
    """CPU of the parallel query workers serving the pass's backends.

    PostgreSQL runs parts of big scans in short-lived worker processes
    ("parallel worker for PID n"), children of the postmaster. A thread looks
    for them every 50 ms and keeps the last CPU figure of each; a worker's last
    50 ms may be missed.
    """

    def __init__(self, postmaster: int, backends: set[int]) -> None:
        self.postmaster = postmaster
        self.backends = backends
        self.cpu: dict[int, float] = {}
        self._others: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> WorkerSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def seconds(self) -> float:
        return sum(self.cpu.values())

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self._sample()

    def _sample(self) -> None:
        path = Path(f"/proc/{self.postmaster}/task/{self.postmaster}/children")
        try:
            children = [int(c) for c in path.read_text().split()]
        except (OSError, ValueError):
            return
        for child in children:
            if child in self._others:
                continue
            if child not in self.cpu:
                try:
                    title = Path(f"/proc/{child}/cmdline").read_bytes().decode(errors="replace")
                except OSError:
                    continue
                found = re.search(r"parallel worker for PID (\d+)", title)
                if not found or int(found.group(1)) not in self.backends:
                    self._others.add(child)
                    continue
            seconds = cpu_seconds(child)
            if seconds:
                self.cpu[child] = max(seconds, self.cpu.get(child, 0.0))


_VERB = re.compile(r"^\s*(SELECT|INSERT INTO|DELETE FROM|UPDATE)\b", re.IGNORECASE)
_FROM = re.compile(r"\bFROM\s+(\w+)", re.IGNORECASE)
_TABLE = re.compile(r"^\s*(?:INSERT INTO|DELETE FROM|UPDATE)\s+(\w+)", re.IGNORECASE)
# (attribute path from the detector, method): the analyzer's steps, then the detector's.
STEPS = (
    ("analyzer", "analyze_batch"),
    ("analyzer", "_controls"),
    ("analyzer", "_triggers"),
    ("", "_detect"),
    ("", "_votes"),
    ("", "_states"),
    ("", "_save"),
    ("", "_gauges"),
)


@dataclass
class Statement:
    count: int = 0
    seconds: float = 0.0
    rows: int = 0
    slowest_s: float = 0.0
    slowest: tuple[str, Any] | None = None


@dataclass
class Profile:
    """The pass's steps (its methods, wrapped) and its SQL statements (engine events)."""

    steps: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    statements: dict[str, Statement] = field(default_factory=lambda: defaultdict(Statement))
    backend_pids: set[int] = field(default_factory=set)
    _stack: list[str] = field(default_factory=list)
    _local: threading.local = field(default_factory=threading.local)

    def wrap(self, detector: Detector) -> None:
        # A step that no longer exists is an error here, not a row that silently
        # drops out of the profile (a renamed step once did).
        for owner_name, name in STEPS:
            owner = getattr(detector, owner_name) if owner_name else detector
            setattr(owner, name, self._timed(name.lstrip("_"), getattr(owner, name)))

    def _timed(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._stack.append(name)
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.steps[name] += time.perf_counter() - started
                self.calls[name] += 1
                self._stack.pop()

        return timed

    def listen(self, engine: Engine) -> None:
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)
        event.listen(engine, "checkout", self._checkout)

    def unlisten(self, engine: Engine) -> None:
        event.remove(engine, "before_cursor_execute", self._before)
        event.remove(engine, "after_cursor_execute", self._after)
        event.remove(engine, "checkout", self._checkout)

    def _checkout(self, dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        self.backend_pids.add(int(dbapi_connection.info.backend_pid))

    def _before(self, _conn: Any, _cursor: Any, _statement: str, *_rest: Any) -> None:
        self._local.started = time.perf_counter()

    def _after(
        self, _conn: Any, cursor: Any, statement: str, parameters: Any, _ctx: Any, _many: bool
    ) -> None:
        elapsed = time.perf_counter() - self._local.started
        verb = _VERB.match(statement)
        kind = verb.group(1).upper() if verb else statement.split(None, 1)[0].upper()
        where = _FROM.search(statement) if kind == "SELECT" else _TABLE.match(statement)
        step = self._stack[-1] if self._stack else "run_pass"
        key = f"{step}: {kind} {where.group(1) if where else '?'}"
        stat = self.statements[key]
        stat.count += 1
        stat.seconds += elapsed
        stat.rows += max(int(getattr(cursor, "rowcount", 0) or 0), 0)
        if elapsed > stat.slowest_s:
            stat.slowest_s = elapsed
            stat.slowest = (statement, parameters)


def explain(database: str, statement: str, parameters: Any) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of a SELECT the pass ran, with its parameters."""
    with psycopg.connect(dsn(database)) as conn:
        rows = conn.execute(
            "EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters or None
        ).fetchall()
        conn.rollback()
    return "\n".join(_LONG_ARRAY.sub(_shorten, str(r[0])) for r in rows)


_LONG_ARRAY = re.compile(r"'\{([^}]{120,})\}'")


def _shorten(found: re.Match[str]) -> str:
    items = found.group(1).split(",")
    return "'{" + ",".join(items[:2]) + f",... {len(items)} values" + "}'"


def explain_slowest(
    database: str, profile: Profile, phase: str, size: int, top: int = 3
) -> dict[str, str]:
    """The plans of the pass's *top* slowest SELECT statements (by total time), re-run."""
    out = {}
    for key, stat in sorted(profile.statements.items(), key=lambda kv: -kv[1].seconds):
        if stat.slowest is None or not stat.slowest[0].lstrip().upper().startswith("SELECT"):
            continue
        statement, parameters = stat.slowest
        out[f"{phase}, new {size:,}: {key}"] = explain(database, statement, parameters)
        if len(out) >= top:
            break
    return out


# ------------------------------------------------------------------ a pass


@dataclass
class PassResult:
    phase: str
    history: int
    new: int
    round: int
    seconds: float
    us_per_new: float
    python_cpu_s: float
    postgres_cpu_s: float  # the pass's backends and their parallel workers
    parallel_workers_cpu_s: float
    other_cpu_s: float  # the rest of the machine (other work: noise)
    analyzed: int
    postponed: int
    keys: int
    changes: dict[str, int]
    reads: dict[str, dict[str, int]]
    steps: dict[str, float]
    statements: dict[str, dict[str, Any]]
    checks: dict[str, Any]
    setup_s: dict[str, float]


def _delta(after: dict[str, dict[str, int]], before: dict[str, dict[str, int]]) -> Any:
    return {t: {k: after[t][k] - before[t][k] for k in after[t]} for t in after}


def check_pass(
    database: str, world: World, work: NewWork, stats: PassStats, base_id: int, phase: str
) -> dict[str, Any]:
    """Did the pass do its work, and only its work?"""
    with psycopg.connect(dsn(database)) as conn:

        def one(sql: str, *params: Any) -> Any:
            row = conn.execute(sql, params).fetchone()
            return row[0] if row else None

        new_verdicts = one("SELECT count(*) FROM verdicts WHERE measurement_pk > %s", base_id)
        queue_left = one("SELECT count(*) FROM analysis_queue")
        wrong_flags = one(
            "SELECT count(*) FROM verdicts v JOIN bench.probe bp ON bp.probe_id = v.probe_id "
            "JOIN bench.domain dm ON dm.name = v.domain "
            "JOIN bench.plan pl ON pl.p = bp.p AND pl.d = dm.d "
            "JOIN bench.pattern pt ON pt.pattern = pl.pattern "
            "WHERE v.measurement_pk > %s AND v.flags <> pt.flags",
            base_id,
        )
        flags: dict[str, int] = dict(
            conn.execute(
                "SELECT flags, count(*) FROM verdicts WHERE measurement_pk > %s GROUP BY flags",
                (base_id,),
            ).fetchall()
        )
        open_keys = set(
            conn.execute("SELECT domain, cc FROM events WHERE state = 'open'").fetchall()
        )
        networks: dict[str, int] = dict(
            conn.execute("SELECT state, count(*) FROM network_states GROUP BY state").fetchall()
        )
    false_events = sorted(open_keys - world.blocked_keys)
    checks = {
        "new_verdicts": new_verdicts,
        "queue_left": queue_left,
        "wrong_flags": wrong_flags,
        "flags": flags,
        "open_events": len(open_keys),
        "planned_blocked_keys": len(world.blocked_keys),
        "blocked_keys_with_open_event": len(open_keys & world.blocked_keys),
        "events_without_planned_block": [list(k) for k in false_events[:10]],
        "network_states": networks,
    }
    problems = []
    if stats.analyzed != work.size or new_verdicts != work.size:
        problems.append(f"{stats.analyzed} analyzed, {new_verdicts} verdicts, {work.size} new")
    if stats.postponed or queue_left:
        problems.append(f"{stats.postponed} postponed, {queue_left} left in the queue")
    if wrong_flags:
        problems.append(f"{wrong_flags} verdicts with unexpected flags")
    if false_events:
        problems.append(f"{len(false_events)} open events where no block was planned")
    if phase != "empty" and len(open_keys & world.blocked_keys) != len(world.blocked_keys):
        problems.append("a planned block seen in the history has no open event")
    checks["problems"] = problems
    return checks


def run_pass(
    database: str,
    settings: CollectorSettings,
    world: World,
    work: NewWork,
    phase: str,
    history: int,
    round_no: int,
    base_id: int,
    analyze_all: bool,
) -> tuple[PassResult, Profile]:
    setup = {"insert_new_s": insert_new_work(database, work, base_id, analyze_all)}
    engine = make_engine(sqlalchemy_url(database))
    profile = Profile()
    try:
        sessions = make_session_factory(engine)
        detector = Detector(settings, FixedClock(work.now))
        with engine.connect() as conn:  # the pool's connection, ready before the clock starts
            conn.exec_driver_sql("SELECT 1")
        profile.listen(engine)
        profile.wrap(detector)
        time.sleep(1.0)  # the setup's connections have exited and flushed their statistics
        before = table_counters(database)
        with engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            assert raw is not None  # a checked-out connection has its DBAPI connection
            pid = int(raw.info.backend_pid)
        profile.backend_pids.clear()
        profile.backend_pids.add(pid)
        backend_before = {pid: cpu_seconds(pid)}
        busy_before = machine_busy_seconds()
        process_before = time.process_time()  # the sampler's thread too
        cpu_before = time.thread_time()  # the pass's thread only
        with WorkerSampler(parent_pid(pid), profile.backend_pids) as workers:
            stats = detector.run_pass(sessions)
            python_cpu = time.thread_time() - cpu_before
            backends = sum(
                cpu_seconds(p) - backend_before.get(p, 0.0) for p in profile.backend_pids
            )
        busy = machine_busy_seconds() - busy_before
        process = time.process_time() - process_before
        profile.unlisten(engine)
    finally:
        engine.dispose()  # the backends exit and flush their table statistics
    time.sleep(1.0)
    reads = _delta(table_counters(database), before)
    checks = check_pass(database, world, work, stats, base_id, phase)
    result = PassResult(
        phase=phase,
        history=history,
        new=work.size,
        round=round_no,
        seconds=stats.seconds,
        us_per_new=stats.seconds / work.size * 1e6,
        python_cpu_s=python_cpu,
        postgres_cpu_s=backends + workers.seconds,
        parallel_workers_cpu_s=workers.seconds,
        other_cpu_s=max(busy - process - backends - workers.seconds, 0.0),
        analyzed=stats.analyzed,
        postponed=stats.postponed,
        keys=stats.keys,
        changes=dict(stats.changes),
        reads=reads,
        steps={k: round(v, 4) for k, v in profile.steps.items()},
        statements={
            k: {"count": s.count, "seconds": round(s.seconds, 4), "rows": s.rows}
            for k, s in sorted(profile.statements.items(), key=lambda kv: -kv[1].seconds)
        },
        checks=checks,
        setup_s=setup,
    )
    return result, profile


# ------------------------------------------------------------------ report


def rows_read(r: PassResult, table: str) -> int:
    t = r.reads.get(table, {})
    return int(t.get("seq_tup_read", 0) + t.get("idx_tup_fetch", 0))


def buffers(r: PassResult, table: str) -> int:
    """Buffer accesses (hits and reads) of the table, its indexes and its TOAST."""
    t = r.reads.get(table, {})
    return int(t.get("heap_blks", 0) + t.get("idx_blks", 0) + t.get("toast_blks", 0))


def best_of(results: list[PassResult]) -> PassResult:
    """The fastest round: other work on a shared machine only ever slows a pass down."""
    return min(results, key=lambda r: r.seconds)


def cpu_of(r: PassResult) -> float:
    return r.python_cpu_s + r.postgres_cpu_s


def render(results: list[PassResult], phases: list[Phase], sizes: list[int]) -> dict[str, Any]:
    groups: dict[tuple[str, int], list[PassResult]] = defaultdict(list)
    for r in results:
        groups[(r.phase, r.new)].append(r)
    table = Table(
        title="detection pass: Detector.run_pass on PostgreSQL (best of the rounds)",
        box=box.SIMPLE_HEAVY,
    )
    for col in (
        "history",
        "stored",
        "new",
        "pass s",
        "each round s",
        "µs / new",
        "python CPU s",
        "postgres CPU s (parallel)",
        "other CPU s (noise)",
        "keys",
        "measurements rows / buffers",
        "verdicts rows / buffers",
        "seq scans",
    ):
        table.add_column(col, justify="left" if col == "history" else "right")
    best: dict[tuple[str, int], PassResult] = {}
    for ph in phases:
        phase, stored = ph.name, ph.stored
        for size in sizes:
            runs = groups.get((phase, size))
            if not runs:
                continue
            m = best[(phase, size)] = best_of(runs)
            seq = sum(m.reads[t]["seq_scan"] for t in BIG_TABLES)
            table.add_row(
                phase,
                f"{stored:,}",
                f"{size:,}",
                f"[bold]{m.seconds:.2f}[/]",
                " ".join(f"{r.seconds:.2f}" for r in runs),
                f"[bold]{m.us_per_new:,.0f}[/]",
                f"{m.python_cpu_s:.2f}",
                f"{m.postgres_cpu_s:.2f} ({m.parallel_workers_cpu_s:.2f})",
                f"{m.other_cpu_s:.1f}",
                f"{m.keys:,}",
                f"{rows_read(m, 'measurements'):,} / {buffers(m, 'measurements'):,}",
                f"{rows_read(m, 'verdicts'):,} / {buffers(m, 'verdicts'):,}",
                str(seq),
            )
    console.print(table)
    ratios: list[dict[str, Any]] = []
    ratio_table = Table(title="ratios and per-measurement cost (best passes)", box=box.SIMPLE_HEAVY)
    for col in ("comparison", "wall", "CPU", "rows read", "buffers", "expected"):
        ratio_table.add_column(
            col, justify="left" if col in ("comparison", "expected") else "right"
        )

    def add(
        name: str,
        wall: float,
        cpu: float,
        expected: str,
        unit: str = "",
        rows: float | None = None,
        pages: float | None = None,
    ) -> None:
        ratios.append(
            {
                "comparison": name,
                "wall": round(wall, 4),
                "cpu": round(cpu, 4),
                "rows_read": None if rows is None else round(rows, 4),
                "buffers": None if pages is None else round(pages, 4),
            }
        )
        ratio_table.add_row(
            name,
            f"[bold]{wall:,.2f}[/]{unit}",
            f"{cpu:,.2f}{unit}",
            "-" if rows is None else f"{rows:,.2f}",
            "-" if pages is None else f"{pages:,.2f}",
            expected,
        )

    def all_rows(r: PassResult) -> int:
        return sum(rows_read(r, t) for t in BIG_TABLES)

    def all_buffers(r: PassResult) -> int:
        return sum(buffers(r, t) for t in BIG_TABLES)

    names = [p.name for p in phases]
    small = sizes[0]
    comparisons = [
        ("history", "empty", "≈ 1 if the stored history is never read"),
        ("history+recent", "recent", "≈ 1 if the history beyond the window is never read"),
        ("recent", "empty", "the window (read by design): its verdicts and controls"),
        (names[-1], "empty", "the brief's 10M / 0, the window included"),
    ]
    for top, other, expected in comparisons:
        a, c = best.get((top, small)), best.get((other, small))
        if top != other and a and c:
            name = f"{top} / {other}, {small:,} new: pass"
            rows = all_rows(a) / all_rows(c) if all_rows(c) else None
            pages = all_buffers(a) / all_buffers(c) if all_buffers(c) else None
            wall, cpu = a.seconds / c.seconds, cpu_of(a) / cpu_of(c)
            add(name, wall, cpu, expected, rows=rows, pages=pages)
    for phase in names:
        runs = sorted((r for (p, _), r in best.items() if p == phase), key=lambda r: r.new)
        if len(runs) < 2:
            continue
        lo, hi = runs[0], runs[-1]
        per_new = (cpu_of(hi) / hi.new) / (cpu_of(lo) / lo.new)
        name = f"{phase}: µs per new, {hi.new:,} / {lo.new:,} new"
        add(name, hi.us_per_new / lo.us_per_new, per_new, "≈ 1 if a pass costs per new measurement")
        marginal = (hi.seconds - lo.seconds) / (hi.new - lo.new)
        marginal_cpu = (cpu_of(hi) - cpu_of(lo)) / (hi.new - lo.new)
        span = f"from {lo.new:,} to {hi.new:,} new"
        add(
            f"{phase}: each further new measurement",
            marginal * 1e6,
            marginal_cpu * 1e6,
            span,
            " µs",
        )
        fixed, fixed_cpu = lo.seconds - lo.new * marginal, cpu_of(lo) - lo.new * marginal_cpu
        add(f"{phase}: fixed cost of a pass", fixed, fixed_cpu, "whatever the new work", " s")
    console.print(ratio_table)
    return {"ratios": ratios}


def render_profile(m: PassResult, title: str) -> None:
    steps = Table(title=f"where the time goes: {title}", box=box.SIMPLE)
    steps.add_column("pass step (method)")
    steps.add_column("s", justify="right")
    steps.add_column("share", justify="right")
    for name, seconds in sorted(m.steps.items(), key=lambda kv: -kv[1]):
        steps.add_row(name, f"{seconds:.3f}", f"{seconds / m.seconds:.0%}")
    console.print(steps)
    sql = Table(title=f"SQL statements: {title}", box=box.SIMPLE)
    for col in ("step: statement", "count", "s", "rows"):
        sql.add_column(col, justify="left" if col.startswith("step") else "right")
    for name, s in list(m.statements.items())[:12]:
        sql.add_row(name, f"{s['count']:,}", f"{s['seconds']:.3f}", f"{s['rows']:,}")
    total = sum(s["seconds"] for s in m.statements.values())
    sql.add_row("[bold]all statements[/]", "", f"[bold]{total:.3f}[/]", "")
    console.print(sql)


def versions() -> dict[str, str]:
    from importlib.metadata import version  # noqa: PLC0415

    out = {"python": platform.python_version()}
    for pkg in ("sqlalchemy", "psycopg"):
        with contextlib.suppress(Exception):
            out[pkg] = version(pkg)
    with contextlib.suppress(Exception), psycopg.connect(PG_ADMIN, connect_timeout=5) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        out["postgresql"] = str(row[0]) if row else "?"
        for name in ("shared_buffers", "work_mem", "jit", "random_page_cost"):
            row = conn.execute(f"SHOW {name}").fetchone()
            out[f"pg_{name}"] = str(row[0]) if row else "?"
    return out


# ------------------------------------------------------------------ main


@dataclass(frozen=True)
class Phase:
    name: str
    stored: int  # measurements stored when the passes run
    loads: tuple[tuple[int, int], ...]  # history rows [lo, hi) to load first
    truncate: bool = False  # empty the database before loading


def plan_phases(history: int, recent: int) -> list[Phase]:
    """The histories, in an order that keeps the table in time order (as a collector fills it).

    Rows [0, history) are older than the window; [history, history + recent) are
    the last 20 minutes. ``recent`` loads those alone; ``history`` starts again
    from an empty database with the old rows; ``history+recent`` adds the last 20
    minutes after them.
    """
    phases = [Phase("empty", 0, ())]
    total = history + recent
    if recent:
        phases.append(Phase("recent", recent, ((history, total),)))
    if history:
        phases.append(Phase("history", history, ((0, history),), truncate=bool(recent)))
        if recent:
            phases.append(Phase("history+recent", total, ((history, total),)))
    return phases


def truncate(database: str) -> None:
    with psycopg.connect(dsn(database)) as conn:
        conn.execute("TRUNCATE measurements, verdicts, analysis_queue, " + ", ".join(STATE_TABLES))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--history",
        type=int,
        default=10_000_000,
        help="stored measurements before the pass (10,000,000)",
    )
    parser.add_argument(
        "--new",
        type=int,
        nargs="+",
        default=[10_000, 40_000],
        help="new probe measurements per pass (10000 40000). The first size runs with "
        "every history, --rounds times; the others with the empty and the full history, "
        "--big-rounds times. 10,000 is one detector interval (15 s) of 200 probes x "
        "1,000 targets every 300 s; 200,000 is one whole measurement interval",
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="passes of the first size per history (2)"
    )
    parser.add_argument(
        "--big-rounds", type=int, default=1, help="passes of the other sizes per history (1)"
    )
    parser.add_argument("--no-recent", action="store_true", help="skip the 'recent' history")
    parser.add_argument("--database", default=DEFAULT_DATABASE, help=f"({DEFAULT_DATABASE})")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--explain",
        action="store_true",
        help="print EXPLAIN (ANALYZE, BUFFERS) of the slowest SELECTs of the passes with a "
        "stored history (always in the JSON file)",
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--keep", action="store_true", help="keep the database at the end")
    args = parser.parse_args(argv)
    if args.history < 0 or min(args.new) < 1 or args.rounds < 1 or args.big_rounds < 1:
        parser.error("--history >= 0, --new >= 1, --rounds >= 1")
    args.new = list(dict.fromkeys(args.new))
    return args


def _sigterm(_signo: int, _frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def timed(label: str) -> Iterator[dict[str, float]]:
    console.print(f"{label} ...", end=" ")
    out: dict[str, float] = {}
    started = time.perf_counter()
    yield out
    out["s"] = time.perf_counter() - started
    console.print(f"{out['s']:.1f} s")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for signo in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signo, _sigterm)
    bench_cmd = shlex.join([sys.executable, *sys.argv])
    console.print(f"[bold]bench command:[/] {bench_cmd}")
    stamp = dt.datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    database = args.database
    settings = CollectorSettings(
        database_url=sqlalchemy_url(database), mode="lab", admin_token="bench-" + "x" * 40
    )
    if settings.measure_interval != 300.0:
        sys.exit("the bench's schedule assumes measure_interval = 300 s (BLOCKWATCH_ env?)")
    recent = 0 if args.no_recent else RECENT_INTERVALS * ROWS_PER_INTERVAL
    total = args.history + recent
    history = History.of(total)
    phases = plan_phases(args.history, recent)
    results: list[PassResult] = []
    explains: dict[str, Any] = {}
    load: dict[str, Any] = {}
    created = False
    try:
        with timed("building the world and the new work (untimed)"):
            world = World(args.seed)
            works = {size: build_new_work(world, size, args.seed + size) for size in args.new}
        for work in works.values():
            console.print(
                f"  new work {work.size:,}: {work.controls:,} controls, spans "
                f"{work.span_s:.1f} s, payload {work.payload_bytes_mean:,.0f} B (zlib), "
                f"built in {work.build_s:.1f} s; the pass's clock is {rfc3339(work.now)}"
            )
        with timed(f"database {database}: drop, create, migrate, probes and targets"):
            recreate_database(database)
            created = True
            setup_database(database, world, total)
        for phase in phases:
            if phase.truncate:
                with timed("emptying the database for the next history"):
                    truncate(database)
            for lo, hi in phase.loads:
                with timed(f"loading history rows {lo:,}..{hi:,} ({hi - lo:,} measurements)"):
                    load[phase.name] = load_history(database, history, lo, hi)
                console.print("  " + ", ".join(f"{k} {v:.1f}" for k, v in load[phase.name].items()))
                at = END - dt.timedelta(seconds=(total - hi) / ROWS_PER_INTERVAL * 300.0)
                with timed(f"the detector's state at the history's end, {rfc3339(at)}"):
                    load[phase.name]["state_s"] = build_history_state(database, settings, at, END)
            snapshot_state(database)
            sizes = args.new if phase.name in ("empty", phases[-1].name) else args.new[:1]
            for size in sizes:
                rounds = args.rounds if size == args.new[0] else args.big_rounds
                for round_no in range(1, rounds + 1):
                    label = (
                        f"pass: history {phase.name} ({phase.stored:,}), new {size:,}, "
                        f"round {round_no}"
                    )
                    console.print(f"{label} ...", end=" ")
                    result, profile = run_pass(
                        database,
                        settings,
                        world,
                        works[size],
                        phase.name,
                        phase.stored,
                        round_no,
                        total,
                        analyze_all=not phase.stored,
                    )
                    console.print(
                        f"[bold]{result.seconds:.2f} s[/] ({result.us_per_new:,.0f} µs/new), "
                        f"CPU {result.python_cpu_s:.1f} s python + {result.postgres_cpu_s:.1f} s "
                        f"postgres, {result.other_cpu_s:.1f} s other; {result.analyzed:,} "
                        f"analyzed, {result.keys:,} keys, changes {result.changes or '-'}"
                    )
                    if result.checks["problems"]:
                        raise BenchFailure(f"{label}: " + "; ".join(result.checks["problems"]))
                    if phase.stored and round_no == rounds:
                        explains.update(explain_slowest(database, profile, phase.name, size))
                    result.setup_s["reset_s"] = reset(database, total)
                    results.append(result)
        extra = render(results, phases, args.new)
        full = phases[-1].name
        for size in args.new:
            runs = [r for r in results if r.phase == full and r.new == size]
            if runs:
                render_profile(best_of(runs), f"history {full}, new {size:,}")
        if args.explain:
            for key, plan in explains.items():
                console.print(f"[bold]EXPLAIN (ANALYZE, BUFFERS)[/] {key}")
                console.print(plan, markup=False, highlight=False)
        console.print(
            "load (untimed): "
            + "; ".join(
                f"{phase}: {v['total_s']:.0f} s to insert and VACUUM ANALYZE, "
                f"{v['state_s']:.0f} s for the detector's state"
                for phase, v in load.items()
            )
        )
        report = {
            "timestamp": stamp,
            "bench_command": bench_cmd,
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "versions": versions(),
            },
            "setup": {
                "targets": TARGETS,
                "probes": PROBES,
                "networks": [list(n) for n in NETWORKS],
                "history": args.history,
                "phases": [asdict(p) for p in phases],
                "new": args.new,
                "history_end": rfc3339(END),
                "new_work": {
                    s: {k: v for k, v in asdict(w).items() if k != "rows" and k != "now"}
                    | {"now": rfc3339(w.now)}
                    for s, w in works.items()
                },
                "sizes_after_load": table_sizes(database),
                "load_s": load,
            },
            "passes": [asdict(r) for r in results],
            "explain": explains,
            **extra,
            "valid": True,
        }
        args.results_dir.mkdir(parents=True, exist_ok=True)
        path = args.results_dir / f"detection-{stamp}.json"
        path.write_text(json.dumps(report, indent=2, default=str) + "\n")
        console.print(f"results: {path}")
        return 0
    except KeyboardInterrupt:
        console.print("[bold red]interrupted[/]: stopping")
        return 130
    except (BenchFailure, psycopg.Error, OSError) as exc:
        console.print(f"[bold red]INVALID RUN:[/] {exc}")
        return 1
    finally:
        if created and not args.keep:
            try:
                drop_database(database)
            except psycopg.Error as exc:
                console.print(f"[bold red]could not drop database {database}:[/] {exc}")
        elif created:
            console.print(f"kept database {database}")


if __name__ == "__main__":
    sys.exit(main())
