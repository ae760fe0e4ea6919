#!/usr/bin/env python3
"""Benchmark the collector's ingestion: signed measurement batches in, on SQLite and PostgreSQL.

For each backend the real collector runs as a subprocess
(``blockwatch-collector serve --mode lab`` on a free loopback port), 50 probes
enroll through the API with an admin-issued token (uses=50), and 50 concurrent
aiohttp clients (one connection each, one probe each) post gzip'd batches of
100 signed measurements to ``POST /api/v1/measurements``, exactly as
``blockwatch-probe`` submits them. Every envelope is signed, and every batch
body serialized and gzip'd, before the timed phase: the client's signing cost is
not measured. Every answer is checked: any item not ``accepted`` makes the run
INVALID (a benchmark of rejections is worthless).

Measured per backend: accepted measurements per second (wall), per-batch
latency (p50/p99), the collector's CPU seconds (/proc, all threads) and peak RSS
(VmHWM); then raw Ed25519 verifications per second on this machine
(``Ed25519PublicKey.verify`` in a tight loop, one thread, the same payloads),
and the ratio of the two. Goal: >= 3,000 accepted/s on PostgreSQL.

Everything runs on 127.0.0.1. The PostgreSQL database (``bw_bench_<random>``)
and the SQLite file (in a temporary directory) are created here and removed on
every path. Results: a rich table on stdout and
``bench/results/ingest-<UTC timestamp>.json``. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import gzip
import hashlib
import json
import os
import platform
import random
import resource
import secrets
import shlex
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from rich import box
from rich.console import Console
from rich.table import Table

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(REPO))  # run as a script: make the project's packages importable

from procstat import cpu_seconds, machine_busy_seconds, status_kb  # noqa: E402

from collector.core.models import pack_payload  # noqa: E402
from probe_agent.protocol.envelope import (  # noqa: E402
    Envelope,
    Purpose,
    b64encode,
    fingerprint,
    public_bytes,
    sign,
    verify,
)

RESULTS_DIR = BENCH_DIR / "results"
COLLECTOR_BIN = REPO / ".venv" / "bin" / "blockwatch-collector"
HOST = "127.0.0.1"
PG_ADMIN = f"host={HOST} port=5432 user=postgres dbname=postgres"
API = "/api/v1"
GOAL_PG_RATE = 3000.0
# The collector's default per-key limit: 120 requests a minute, burst 120.
DEFAULT_RATE_LIMIT = 120
REQUEST_TIMEOUT = 120.0  # seconds, one batch
SOFTWARE = {"name": "blockwatch-probe", "version": "0.1.0"}
DECLARED = {"cc": "CN", "asn": 4134}
TLDS = ("social", "online", "xyz", "bar", "cloud", "net")

console = Console(width=None if sys.stdout.isatty() else 150)


class BenchFailure(RuntimeError):
    """A wrong answer, a dead collector or a timeout: the run is invalid."""


# ------------------------------------------------------------------ the workload


def rfc3339(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _hex(rng: random.Random, n: int) -> str:
    return rng.randbytes(n).hex()


def _cert(rng: random.Random, name: str, issuer: str) -> dict[str, Any]:
    return {
        "subject": f"CN={name}",
        "issuer": issuer,
        "sans": [name, f"www.{name}", f"media.{name}"],
        "sha256": _hex(rng, 32),
        "not_before": "2026-09-30T00:00:00Z",
        "not_after": "2026-12-29T23:59:59Z",
        "chain_length": 2,
    }


def measurement_doc(rng: random.Random, domain: str, started: dt.datetime) -> dict[str, Any]:
    """One measurement shaped like a ``blockwatch-probe measure`` JSON line (about 3 KB).

    An https measurement of an instance that answers, as the probe makes it by
    default: one resolver (from resolv.conf) asked A and AAAA over UDP and TCP,
    one address dialled, the decoy and the real TLS handshakes (with their
    certificates), the Mastodon API answer.
    """
    ip = f"{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    ip6 = f"2a01:4f8:{rng.randint(1, 0xFFFF):x}:{rng.randint(1, 0xFFFF):x}::2"
    resolver = "10.0.0.53:53"
    dns: list[dict[str, Any]] = []
    t = 0.0002
    for transport in ("udp", "tcp"):
        for qtype, answer in (("A", ip), ("AAAA", ip6)):
            dns.append(
                {
                    "t0": round(t, 4),
                    "t": round(t + (0.5062 if transport == "udp" else 0.031), 4),
                    "failure": None,
                    "failed_operation": None,
                    "resolver": resolver,
                    "transport": transport,
                    "query_type": qtype,
                    "rcode": "NOERROR",
                    "answers": [answer],
                    "cnames": [],
                    "late_answers": [],
                    "responses": 1,
                    "ignored": 0,
                    "responses_agree": True,
                    "queries_sent": 1,
                    "injection_sink": False,
                }
            )
    issuer = "CN=R11,O=Let's Encrypt,C=US"
    tls_common = {"ip": ip, "port": 443, "version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384"}
    return {
        "measurement_id": str(uuid.UUID(bytes=rng.randbytes(16), version=4)),
        "domain": domain,
        "port": 443,
        "scheme": "https",
        "started_at": rfc3339(started),
        "software": SOFTWARE,
        "decoy_sni": "example.com",
        "runtime": round(rng.uniform(0.6, 2.1), 4),
        "dns": dns,
        "tcp": [
            {
                "t0": 0.0321,
                "t": 0.0764,
                "failure": None,
                "failed_operation": None,
                "ip": ip,
                "port": 443,
            }
        ],
        "tls": [
            {
                "t0": 0.0765,
                "t": 0.1598,
                "failure": None,
                "failed_operation": None,
                **tls_common,
                "sni": "example.com",
                "decoy": True,
                "cert_valid": None,
                "certificate": _cert(rng, domain, issuer),
            },
            {
                "t0": 0.1601,
                "t": 0.2914,
                "failure": None,
                "failed_operation": None,
                **tls_common,
                "sni": domain,
                "decoy": False,
                "cert_valid": True,
                "certificate": _cert(rng, domain, issuer),
            },
        ],
        "http": [
            {
                "t0": 0.2915,
                "t": 0.3877,
                "failure": None,
                "failed_operation": None,
                "url": f"https://{domain}/api/v2/instance",
                "ip": ip,
                "port": 443,
                "status_code": 200,
                "body_length": rng.randint(1500, 9000),
                "body_truncated": False,
                "body_sha256": _hex(rng, 32),
                "headers": {
                    "server": "Mastodon",
                    "content-type": "application/json; charset=utf-8",
                    "content-length": str(rng.randint(1500, 9000)),
                },
                "mastodon": True,
                "instance_domain": domain,
                "software": "mastodon",
            }
        ],
        "hints": [],
    }


@dataclass
class Probe:
    key: Ed25519PrivateKey
    key_id: str
    public: bytes
    probe_id: str | None = None


@dataclass
class Workload:
    probes: list[Probe]
    batch_size: int
    # bodies[p][b]: the gzip'd JSON body of probe p's batch b (timed phase).
    bodies: list[list[bytes]]
    # warm-up batches (probe index, body), posted before the timed phase.
    warmup: list[tuple[int, bytes]]
    # a sample of signed envelopes, for the verification microbenchmarks.
    sample: list[Envelope]
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class ProbeBatches:
    bodies: list[bytes]
    sample: list[Envelope]
    payload_sizes: list[int]
    json_sizes: list[int]


def probe_batches(
    private: bytes, n_batches: int, batch_size: int, seed: int, first_serial: int, now: str
) -> ProbeBatches:
    """One probe's batches, signed and gzip'd as probe_agent/daemon/client.py sends them.

    Runs in a worker process (module level, picklable arguments).
    """
    key = Ed25519PrivateKey.from_private_bytes(private)
    rng = random.Random(seed)  # test data, not secrets
    signed_at = dt.datetime.fromisoformat(now)
    out = ProbeBatches([], [], [], [])
    serial = first_serial
    for _ in range(n_batches):
        envelopes = []
        for _ in range(batch_size):
            serial += 1
            domain = f"instance{serial % 20000}.{TLDS[serial % len(TLDS)]}"
            started = signed_at - dt.timedelta(seconds=rng.uniform(5, 3600))
            document = {
                "signed_at": rfc3339(signed_at),
                "measurement": measurement_doc(rng, domain, started),
                "declared": DECLARED,
                "via_proxy": False,
            }
            envelope = sign(key, Purpose.MEASUREMENT, document)
            if len(out.sample) < 16:
                out.sample.append(envelope)
            out.payload_sizes.append(len(envelope.payload))
            envelopes.append(envelope.to_json())
        raw = json.dumps({"measurements": envelopes}, separators=(",", ":")).encode()
        out.json_sizes.append(len(raw))
        out.bodies.append(gzip.compress(raw, compresslevel=6, mtime=0))
    return out


def build_workload(
    n_probes: int, batches_per_probe: int, batch_size: int, warmup_per_probe: int, seed: int
) -> Workload:
    """Sign every measurement and build every gzip'd batch body now, before any timing."""
    started_at = time.perf_counter()
    probes = []
    for _ in range(n_probes):
        key = Ed25519PrivateKey.generate()
        raw = public_bytes(key)
        probes.append(Probe(key, fingerprint(raw), raw))
    now = dt.datetime.now(dt.UTC).isoformat()
    per_probe = warmup_per_probe + batches_per_probe
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        futures = [
            pool.submit(
                probe_batches,
                probe.key.private_bytes_raw(),
                per_probe,
                batch_size,
                seed * 100_003 + i,
                i * per_probe * batch_size,
                now,
            )
            for i, probe in enumerate(probes)
        ]
        built = [f.result() for f in futures]
    payloads = [n for b in built for n in b.payload_sizes]
    json_sizes = [n for b in built for n in b.json_sizes]
    gz_sizes = [len(body) for b in built for body in b.bodies]
    return Workload(
        probes=probes,
        batch_size=batch_size,
        bodies=[b.bodies[warmup_per_probe:] for b in built],
        warmup=[(i, body) for i, b in enumerate(built) for body in b.bodies[:warmup_per_probe]],
        sample=[e for b in built for e in b.sample],
        stats={
            "envelopes": len(payloads),
            "build_s": round(time.perf_counter() - started_at, 2),
            "payload_bytes_mean": round(statistics.fmean(payloads)),
            "payload_bytes_min": min(payloads),
            "payload_bytes_max": max(payloads),
            "batch_json_bytes_mean": round(statistics.fmean(json_sizes)),
            "batch_gzip_bytes_mean": round(statistics.fmean(gz_sizes)),
        },
    )


# ------------------------------------------------------------------ processes


def postmaster_pid() -> int | None:
    """The PostgreSQL server's main process, if it runs on this machine (for its CPU)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
            if cmd and cmd[0].endswith(b"/postgres") and b"-D" in cmd:
                return int(entry.name)
    return None


def children_of(root: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError):
            raw = (entry / "stat").read_text()
            if int(raw[raw.rindex(")") + 2 :].split()[1]) == root:
                found.append(int(entry.name))
    return found


def tree_cpu_seconds(root: int) -> float:
    """CPU of *root*, its reaped children and its live children: monotone across exits."""
    total = cpu_seconds(root, children=True)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError):
            raw = (entry / "stat").read_text()
            if int(raw[raw.rindex(")") + 2 :].split()[1]) == root:
                total += cpu_seconds(int(entry.name))
    return total


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Collector:
    """``blockwatch-collector serve`` as a subprocess on a free loopback port."""

    database_url: str
    log: Path
    admin_token: str
    env: dict[str, str]
    workers: int = 2
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def command(self) -> list[str]:
        return [
            str(COLLECTOR_BIN),
            "serve",
            "--database-url",
            self.database_url,
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--mode",
            "lab",
            "--admin-token",
            self.admin_token,
            "--workers",
            str(self.workers),
        ]

    def start(self, timeout: float) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            with (
                contextlib.suppress(OSError),
                socket.create_connection((HOST, self.port), timeout=1) as sock,
            ):
                sock.sendall(f"GET /healthz HTTP/1.0\r\nHost: {HOST}\r\n\r\n".encode())
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return
            time.sleep(0.1)
        raise BenchFailure(f"the collector did not answer /healthz within {timeout:g} s")

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise BenchFailure(f"the collector exited ({self.proc.returncode}):\n{tail}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ------------------------------------------------------------------ databases


def create_pg_database() -> str:
    name = f"bw_bench_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_pg_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=10) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def stored_count(backend: str, target: str) -> int:
    """Rows in the measurements table: what was acknowledged must be there."""
    if backend == "postgresql":
        with psycopg.connect(f"host={HOST} port=5432 user=postgres dbname={target}") as conn:
            row = conn.execute("SELECT count(*) FROM measurements").fetchone()
            return int(row[0]) if row else 0
    with contextlib.closing(sqlite3.connect(target)) as conn:
        return int(conn.execute("SELECT count(*) FROM measurements").fetchone()[0])


# ------------------------------------------------------------------ HTTP


GZIP_HEADERS = {
    "Content-Type": "application/json",
    "Accept": "application/json",
    "Content-Encoding": "gzip",
}


def bench_domains() -> list[str]:
    """Every domain the workload measures: probe_batches names serial s
    instance{s % 20000}.{TLDS[s % 6]}, and 20000 and 6 are both even, so n and the
    TLD's index have the same parity (60,000 domains)."""
    return sorted(
        f"instance{n}.{tld}" for n in range(20000) for i, tld in enumerate(TLDS) if n % 2 == i % 2
    )


async def enroll_all(base: str, admin_token: str, probes: list[Probe]) -> None:
    """The workload's domains become targets (the collector stores measurements of
    targets only); one token with uses=len(probes) from the admin API; each probe
    enrolls with its own key."""
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        domains = bench_domains()
        for start in range(0, len(domains), 10_000):
            async with session.post(
                base + API + "/targets",
                json={"domains": domains[start : start + 10_000]},
                headers={"Authorization": f"Bearer {admin_token}"},
            ) as resp:
                if resp.status != 201:
                    raise BenchFailure(f"targets: HTTP {resp.status} {await resp.text()}")
        async with session.post(
            base + API + "/probes/tokens",
            json={"uses": len(probes), "expires_in": 3600, "role": "probe"},
            headers={"Authorization": f"Bearer {admin_token}"},
        ) as resp:
            data = await resp.json()
            if resp.status != 201:
                raise BenchFailure(f"token: HTTP {resp.status} {data}")
            token = data["token"]
        for probe in probes:
            document = {
                "signed_at": rfc3339(dt.datetime.now(dt.UTC)),
                "public_key": b64encode(probe.public),
                "token": token,
                "role": "probe",
                "declared": DECLARED,
                "software": SOFTWARE,
            }
            envelope = sign(probe.key, Purpose.ENROLL, document).to_json()
            async with session.post(base + API + "/probes/enroll", json=envelope) as resp:
                data = await resp.json()
                if resp.status != 201 or data.get("status") != "active":
                    raise BenchFailure(f"enroll: HTTP {resp.status} {data}")
                probe.probe_id = data["probe_id"]


def check_answer(status: int, raw: bytes, expected: int) -> None:
    try:
        data = json.loads(raw)
    except ValueError:
        raise BenchFailure(f"HTTP {status}, not JSON: {raw[:300]!r}") from None
    if status != 200:
        raise BenchFailure(f"HTTP {status}: {data}")
    results = data.get("results", [])
    bad = [r for r in results if r.get("status") != "accepted"]
    if data.get("accepted") != expected or len(results) != expected or bad:
        raise BenchFailure(
            f"{data.get('accepted')}/{expected} accepted, {data.get('duplicates')} duplicates, "
            f"{data.get('rejected')} rejected; first: {bad[:1]}"
        )


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    accepted: int = 0
    batches: int = 0
    first_sent: float = 0.0
    last_answer: float = 0.0
    time_bounded: bool = False


async def client(
    url: str, bodies: list[bytes], batch_size: int, tally: Tally, stop_at: float
) -> None:
    """One probe's uploader: one connection, its batches one after the other.

    No batch is started after *stop_at* (perf_counter): the time bound.
    """
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    ) as session:
        for body in bodies:
            started = time.perf_counter()
            if started >= stop_at:
                tally.time_bounded = True
                return
            async with session.post(url, data=body, headers=GZIP_HEADERS) as resp:
                raw = await resp.read()
                status = resp.status
            ended = time.perf_counter()
            check_answer(status, raw, batch_size)
            tally.latencies.append(ended - started)
            tally.accepted += batch_size
            tally.batches += 1
            tally.last_answer = max(tally.last_answer, ended)


async def post_all(
    base: str, per_client: list[list[bytes]], batch_size: int, tally: Tally, bound: float
) -> None:
    url = base + API + "/measurements"
    tally.first_sent = time.perf_counter()
    stop_at = tally.first_sent + bound
    # Hard stop: the batches in flight at the bound get REQUEST_TIMEOUT to finish.
    async with asyncio.timeout(bound + REQUEST_TIMEOUT + 5):
        async with asyncio.TaskGroup() as group:  # the first failure cancels the others
            for bodies in per_client:
                group.create_task(client(url, bodies, batch_size, tally, stop_at))


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def run_posts(
    base: str, per_client: list[list[bytes]], batch_size: int, tally: Tally, bound: float
) -> None:
    """Run the clients (at most *bound* s of new batches), or raise BenchFailure."""
    try:
        asyncio.run(post_all(base, per_client, batch_size, tally, bound))
    except TimeoutError:
        raise BenchFailure(f"hard time limit reached: {tally.accepted:,} accepted so far") from None
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        first = next((e for e in leaves if isinstance(e, BenchFailure)), leaves[0])
        if isinstance(first, BenchFailure):
            raise first from None
        if isinstance(first, aiohttp.ClientError | OSError | TimeoutError):
            raise BenchFailure(f"HTTP client error: {first!r}") from None
        raise


async def scrape_batch_seconds(collector: Collector) -> tuple[float, int]:
    """The collector's own ``blockwatch_ingest_batch_seconds`` (sum, count); /metrics
    needs a token (the admin's here)."""
    bearer = {"Authorization": f"Bearer {collector.admin_token}"}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.get(collector.url + "/metrics", headers=bearer) as resp,
    ):
        text = await resp.text()
    total, count = 0.0, 0
    for line in text.splitlines():
        if line.startswith("blockwatch_ingest_batch_seconds_sum"):
            total = float(line.split()[-1])
        elif line.startswith("blockwatch_ingest_batch_seconds_count"):
            count = int(float(line.split()[-1]))
    return total, count


# ------------------------------------------------------------------ one backend


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


@dataclass
class BackendResult:
    backend: str
    clients: int
    batches_per_client: int
    batch_size: int
    measurements: int = 0
    accepted: int = 0
    stored: int = 0
    wall_s: float = 0.0
    rate: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    collector_cpu_s: float = 0.0
    collector_cpu_per_item_us: float = 0.0
    collector_peak_rss_mb: float = 0.0
    collector_rss_end_mb: float = 0.0
    postgres_cpu_s: float | None = None
    driver_cpu_s: float = 0.0
    # Busy CPU of the whole machine during the phase, and what of it was none of
    # the above (other work on the machine: noise).
    machine_busy_cpu_s: float = 0.0
    other_cpu_s: float = 0.0
    time_bounded: bool = False
    server_batch_s_mean_ms: float = 0.0
    collector_pid: int = 0
    collector_command: str = ""
    ratio_to_raw_verify: float | None = None
    valid: bool = False
    error: str | None = None


def run_backend(
    backend: str,
    workload: Workload,
    batches_per_client: int,
    tmp: Path,
    args: argparse.Namespace,
    pg_databases: list[str],
) -> BackendResult:
    result = BackendResult(
        backend=backend,
        clients=len(workload.probes),
        batches_per_client=batches_per_client,
        batch_size=workload.batch_size,
    )
    if backend == "postgresql":
        try:
            name = create_pg_database()
        except psycopg.Error as exc:
            result.error = f"cannot create a database at {HOST}:5432: {exc}"
            console.print(f"[bold red]{backend} FAILED:[/] {result.error}")
            return result
        pg_databases.append(name)  # dropped by main() on every path
        database_url, target = f"postgresql://postgres@{HOST}:5432/{name}", name
    else:
        target = str(tmp / "blockwatch-bench.db")
        database_url = f"sqlite:///{target}"
    per_probe = batches_per_client + args.warmup
    env = {}
    if per_probe > DEFAULT_RATE_LIMIT - 5:  # one probe's batches must fit its token bucket
        env["BLOCKWATCH_PROBE_RATE_LIMIT"] = str(per_probe * 2)
    admin_token = secrets.token_urlsafe(30)[:40]
    collector = Collector(
        database_url, tmp / f"collector-{backend}.log", admin_token, env, workers=args.workers
    )
    result.collector_command = shlex.join(
        [f"{k}={v}" for k, v in env.items()]
        + [a if a != admin_token else "<40 random>" for a in collector.command]
    )
    postmaster = postmaster_pid() if backend == "postgresql" else None
    try:
        collector.start(args.start_timeout)
        result.collector_pid = collector.pid
        console.print(
            f"[bold]{backend}[/]: collector pid {collector.pid} on {collector.url}, {database_url}"
        )
        asyncio.run(enroll_all(collector.url, admin_token, workload.probes))
        warm = [[body] for _, body in workload.warmup]
        if warm:
            run_posts(collector.url, warm, workload.batch_size, Tally(), 120)
        per_client = [bodies[:batches_per_client] for bodies in workload.bodies]
        expected = sum(len(b) for b in per_client) * workload.batch_size
        result.measurements = expected
        console.print(
            f"  timed phase: {len(per_client)} clients x {batches_per_client} batches x "
            f"{workload.batch_size} = {expected:,} measurements ...",
            end=" ",
        )
        cpu0 = tree_cpu_seconds(collector.pid)  # serve --workers N: the whole tree
        pg0 = tree_cpu_seconds(postmaster) if postmaster else 0.0
        busy0 = machine_busy_seconds()
        me0 = resource.getrusage(resource.RUSAGE_SELF)
        before_sum, before_count = asyncio.run(scrape_batch_seconds(collector))
        tally = Tally()
        run_posts(collector.url, per_client, workload.batch_size, tally, args.max_seconds)
        wall = tally.last_answer - tally.first_sent
        busy1 = machine_busy_seconds()
        me1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu1 = tree_cpu_seconds(collector.pid)
        pg1 = tree_cpu_seconds(postmaster) if postmaster else 0.0
        after_sum, after_count = asyncio.run(scrape_batch_seconds(collector))
        collector.check_alive()
        result.wall_s = round(wall, 3)
        result.accepted = tally.accepted
        result.rate = round(tally.accepted / wall, 1)
        result.latency_ms = {
            f"p{q}": round(pct(tally.latencies, q) * 1000, 1) for q in (50, 90, 99)
        } | {"max": round(max(tally.latencies) * 1000, 1)}
        result.collector_cpu_s = round(cpu1 - cpu0, 2)
        result.collector_cpu_per_item_us = round((cpu1 - cpu0) / tally.accepted * 1e6, 1)
        tree = [collector.pid, *children_of(collector.pid)]
        result.collector_peak_rss_mb = round(sum(status_kb(p, "VmHWM") for p in tree) / 1024, 1)
        result.collector_rss_end_mb = round(status_kb(collector.pid, "VmRSS") / 1024, 1)
        result.postgres_cpu_s = round(pg1 - pg0, 2) if postmaster else None
        result.driver_cpu_s = round(me1.ru_utime + me1.ru_stime - me0.ru_utime - me0.ru_stime, 2)
        result.machine_busy_cpu_s = round(busy1 - busy0, 2)
        result.other_cpu_s = round(
            max(
                0.0,
                result.machine_busy_cpu_s
                - result.collector_cpu_s
                - result.driver_cpu_s
                - (result.postgres_cpu_s or 0.0),
            ),
            2,
        )
        result.time_bounded = tally.time_bounded
        if after_count > before_count:
            result.server_batch_s_mean_ms = round(
                (after_sum - before_sum) / (after_count - before_count) * 1000, 1
            )
        result.stored = stored_count(backend, target) - len(warm) * workload.batch_size
        if result.stored != result.accepted:
            raise BenchFailure(f"{result.accepted:,} accepted but {result.stored:,} stored")
        result.valid = True
        console.print(
            ("[yellow](time bound reached)[/] " if tally.time_bounded else "")
            + f"{result.rate:,.0f} accepted/s in {wall:.1f} s, "
            f"p50 {result.latency_ms['p50']:.0f} ms, collector CPU {result.collector_cpu_s:.1f} s"
        )
    except BenchFailure as exc:
        result.error = str(exc)
        console.print(f"\n[bold red]{backend} FAILED:[/] {exc}")
        with contextlib.suppress(OSError):
            tail = collector.log.read_text(errors="replace")[-2000:]
            if tail.strip():
                console.print("  collector log (end):", style="dim")
                print(tail, flush=True)
    finally:
        collector.stop()
    return result


# ------------------------------------------------------------------ verification


def _loop_rate(fn: Any, items: list[Any], seconds: float, rounds: int) -> tuple[float, float]:
    """(best wall rate of *rounds* rounds, rate per CPU second over all): calls of fn/s."""
    best, count_all, cpu0 = 0.0, 0, time.process_time()
    for _ in range(rounds):
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds / rounds:
            for item in items:
                fn(*item)
            count += len(items)
        best = max(best, count / (time.perf_counter() - started))
        count_all += count
    return best, count_all / max(1e-9, time.process_time() - cpu0)


def ed25519_rates(workload: Workload, seconds: float, rounds: int = 5) -> dict[str, Any]:
    """Ed25519 verifications per second, one thread, on the workload's signed payloads.

    The machine may be shared: the best of *rounds* rounds is the headline (the
    rate of an unloaded core); the rate per CPU second is kept too.
    """
    keys = {p.key_id: p.public for p in workload.probes}
    # Raw verify: the key object made once, the signed bytes ready.
    raw_items = [
        (
            Ed25519PublicKey.from_public_bytes(keys[e.key_id]),
            e.signature,
            Purpose.MEASUREMENT.prefix + e.payload,
        )
        for e in workload.sample
    ]
    raw_best, raw_cpu = _loop_rate(
        lambda public, signature, message: public.verify(signature, message),
        raw_items,
        seconds,
        rounds,
    )
    # The collector's path per item: probe_agent.protocol.envelope.verify (SHA-256 of the key
    # for the key id check, key object from bytes, prefix + payload, verify).
    env_best, env_cpu = _loop_rate(
        lambda envelope, raw: verify(envelope, Purpose.MEASUREMENT, raw),
        [(e, keys[e.key_id]) for e in workload.sample],
        seconds,
        rounds,
    )
    return {
        "raw_verify_per_s": round(raw_best),
        "raw_verify_per_cpu_s": round(raw_cpu),
        "envelope_verify_per_s": round(env_best),
        "envelope_verify_per_cpu_s": round(env_cpu),
        "payload_bytes_mean": round(statistics.fmean(len(e.payload) for e in workload.sample)),
        "distinct_payloads": len(raw_items),
        "seconds_each": seconds,
        "rounds": rounds,
    }


def stage_costs(workload: Workload, rounds: int = 5) -> dict[str, float]:
    """Microseconds per item of the CPU-bound steps the collector runs for each measurement.

    The same functions the collector calls (read-only use, in this process), on
    the workload's own envelopes: a floor for the collector's CPU per item that
    ignores HTTP, the database and the threadpool.
    """
    from collector.services.documents import MeasurementDocument  # noqa: PLC0415

    keys = {p.key_id: p.public for p in workload.probes}
    wire = [e.to_json() for e in workload.sample]
    body = json.dumps({"measurements": wire}, separators=(",", ":")).encode()
    packed = gzip.compress(body, compresslevel=6, mtime=0)
    n = len(wire)

    def best(fn: Any) -> float:
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        return round(min(times) / n * 1e6, 1)

    def documents() -> None:
        for e in workload.sample:
            MeasurementDocument.model_validate_json(e.payload)

    def verify_all() -> None:
        for e in workload.sample:
            verify(e, Purpose.MEASUREMENT, keys[e.key_id])

    return {
        "gunzip_body": best(lambda: zlib.decompress(packed, wbits=16 + zlib.MAX_WBITS)),
        "json_loads_body": best(lambda: json.loads(body)),
        "envelope_from_json": best(lambda: [Envelope.from_json(w) for w in wire]),
        "ed25519_envelope_verify": best(verify_all),
        "pydantic_measurement_document": best(documents),
        "pack_payload": best(lambda: [pack_payload(e.payload) for e in workload.sample]),
        "sha256_payload": best(lambda: [hashlib.sha256(e.payload) for e in workload.sample]),
    }


# ------------------------------------------------------------------ report


def render(
    results: list[BackendResult], crypto: dict[str, Any], stages: dict[str, float], wl: Workload
) -> dict[str, Any]:
    raw = crypto["raw_verify_per_s"]
    table = Table(
        title="collector ingestion: POST /api/v1/measurements (gzip, signed items)",
        box=box.SIMPLE_HEAVY,
    )
    for col in (
        "backend",
        "accepted",
        "wall s",
        "accepted/s",
        "batch p50 ms",
        "batch p99 ms",
        "batch max ms",
        "accepted/s ÷ raw verify/s",
    ):
        table.add_column(col, justify="left" if col == "backend" else "right")
    for r in results:
        if not r.valid:
            table.add_row(r.backend, "-", "-", "[bold red]INVALID[/]", "-", "-", "-", "-")
            continue
        table.add_row(
            r.backend + (" (time bound)" if r.time_bounded else ""),
            f"{r.accepted:,}",
            f"{r.wall_s:.1f}",
            f"[bold]{r.rate:,.0f}[/]",
            f"{r.latency_ms['p50']:.0f}",
            f"{r.latency_ms['p99']:.0f}",
            f"{r.latency_ms['max']:.0f}",
            f"{r.rate / raw:.3f}",
        )
    console.print(table)
    usage = Table(title="CPU and memory during the timed phase", box=box.SIMPLE_HEAVY)
    for col in (
        "backend",
        "collector CPU s",
        "collector CPU / wall",
        "collector CPU µs/item",
        "collector peak RSS MB",
        "postgres CPU s",
        "driver CPU s",
        "other CPU s (noise)",
    ):
        usage.add_column(col, justify="left" if col == "backend" else "right")
    for r in results:
        if r.valid:
            usage.add_row(
                r.backend,
                f"{r.collector_cpu_s:.1f}",
                f"{r.collector_cpu_s / r.wall_s:.0%}",
                f"{r.collector_cpu_per_item_us:.0f}",
                f"{r.collector_peak_rss_mb:.0f}",
                "-" if r.postgres_cpu_s is None else f"{r.postgres_cpu_s:.1f}",
                f"{r.driver_cpu_s:.1f}",
                f"{r.other_cpu_s:.1f}",
            )
    console.print(usage)
    console.print(
        f"Ed25519 on this machine (one thread, {crypto['payload_bytes_mean']:,}-byte payloads): "
        f"[bold]{raw:,}[/] raw verify/s (Ed25519PublicKey.verify, best of "
        f"{crypto['rounds']} rounds; {crypto['raw_verify_per_cpu_s']:,} per CPU second), "
        f"{crypto['envelope_verify_per_s']:,}/s through probe_agent.protocol.envelope.verify "
        "(key from bytes + key id check)"
    )
    console.print(
        f"workload: payload {wl.stats['payload_bytes_mean']:,} B mean, batch JSON "
        f"{wl.stats['batch_json_bytes_mean']:,} B, gzip'd {wl.stats['batch_gzip_bytes_mean']:,} B; "
        f"{wl.stats['envelopes']:,} envelopes signed in {wl.stats['build_s']:.1f} s (untimed)"
    )
    stage_table = Table(
        title="per-item CPU floor (collector functions, in-process, no HTTP/DB)",
        box=box.SIMPLE,
    )
    stage_table.add_column("step")
    stage_table.add_column("µs/item", justify="right")
    for name, us in stages.items():
        stage_table.add_row(name, f"{us:.1f}")
    total = sum(v for k, v in stages.items() if k != "sha256_payload")
    stage_table.add_row("[bold]sum (without sha256)[/]", f"[bold]{total:.1f}[/]")
    console.print(stage_table)
    pg = next((r for r in results if r.backend == "postgresql"), None)
    goals = []
    if pg is not None:
        met = pg.valid and pg.rate >= GOAL_PG_RATE
        goals.append(
            {
                "goal": f"PostgreSQL >= {GOAL_PG_RATE:,.0f} accepted/s",
                "value": pg.rate if pg.valid else None,
                "met": met,
            }
        )
        verdict = "[bold green]MET[/]" if met else "[bold red]MISSED[/]"
        console.print(
            f"goal: PostgreSQL >= {GOAL_PG_RATE:,.0f} accepted/s on this "
            f"{os.cpu_count()}-core machine: "
            + (f"{pg.rate:,.0f}/s {verdict}" if pg.valid else f"no valid result {verdict}")
        )
        if pg.valid:
            console.print(
                f"  the collector spent {pg.collector_cpu_per_item_us:,.0f} µs of CPU per accepted "
                f"measurement: one core's worth of it is {1e6 / pg.collector_cpu_per_item_us:,.0f}"
                f"/s; {GOAL_PG_RATE:,.0f}/s needs <= {1e6 / GOAL_PG_RATE:,.0f} µs/item on one "
                "core, or more than one core"
            )
    return {"goals": goals, "per_item_floor_us": round(total, 1)}


def versions() -> dict[str, str]:
    from importlib.metadata import version  # noqa: PLC0415

    out = {"python": platform.python_version()}
    for pkg in (
        "cryptography",
        "fastapi",
        "starlette",
        "uvicorn",
        "uvloop",
        "httptools",
        "pydantic",
        "sqlalchemy",
        "psycopg",
        "aiohttp",
    ):
        with contextlib.suppress(Exception):
            out[pkg] = version(pkg)
    with contextlib.suppress(Exception), psycopg.connect(PG_ADMIN, connect_timeout=5) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        out["postgresql"] = str(row[0]) if row else "?"
    out["sqlite"] = sqlite3.sqlite_version
    return out


# ------------------------------------------------------------------ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backends",
        nargs="+",
        choices=("sqlite", "postgresql"),
        default=["sqlite", "postgresql"],
    )
    parser.add_argument("--clients", type=int, default=50, help="probes, one client each (50)")
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="collector processes (serve --workers; default: the CPU count)",
    )
    parser.add_argument("--batch-size", type=int, default=100, help="envelopes a batch (100)")
    parser.add_argument(
        "--batches", type=int, default=40, help="batches per client on PostgreSQL (40)"
    )
    parser.add_argument(
        "--sqlite-batches", type=int, default=40, help="batches per client on SQLite (40)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed batches per client (1)")
    parser.add_argument("--verify-seconds", type=float, default=2.0)
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=240.0,
        help="time bound of a timed phase: no batch starts after it; the rate counts what "
        "was done (240)",
    )
    parser.add_argument("--start-timeout", type=float, default=60.0, help="seconds (60)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if min(args.clients, args.batch_size, args.batches, args.sqlite_batches) < 1:
        parser.error("--clients, --batch-size and the batch counts must be >= 1")
    if args.batch_size > 500:
        parser.error("--batch-size: the collector takes at most 500 envelopes a batch")
    return args


def _sigterm(_signo: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for signo in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signo, _sigterm)
    if not COLLECTOR_BIN.exists():
        sys.exit(f"{COLLECTOR_BIN} not found: install the project into .venv first")
    bench_cmd = shlex.join([sys.executable, *sys.argv])
    console.print(f"[bold]bench command:[/] {bench_cmd}")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    tmp = Path(tempfile.mkdtemp(prefix="bw-bench-ingest-"))
    pg_databases: list[str] = []
    results: list[BackendResult] = []
    batches = {"sqlite": args.sqlite_batches, "postgresql": args.batches}
    try:
        most = max(batches[b] for b in args.backends)
        console.print(
            f"signing {args.clients * (most + args.warmup) * args.batch_size:,} envelopes "
            "and building the gzip'd batch bodies (untimed) ...",
            end=" ",
        )
        workload = build_workload(args.clients, most, args.batch_size, args.warmup, args.seed)
        console.print(f"{workload.stats['build_s']:.1f} s")
        for backend in args.backends:
            results.append(
                run_backend(backend, workload, batches[backend], tmp, args, pg_databases)
            )
        console.print(f"Ed25519 verify loop ({args.verify_seconds:g} s each) ...")
        crypto = ed25519_rates(workload, args.verify_seconds)
        stages = stage_costs(workload)
        extra = render(results, crypto, stages, workload)
        for r in results:
            if r.valid:
                r.ratio_to_raw_verify = round(r.rate / crypto["raw_verify_per_s"], 4)
        report = {
            "timestamp": stamp,
            "bench_command": bench_cmd,
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "versions": versions(),
            },
            "setup": {
                "clients": args.clients,
                "connections_per_client": 1,
                "batch_size": args.batch_size,
                "batches_per_client": batches,
                "warmup_batches_per_client": args.warmup,
                "content_encoding": "gzip (level 6, as probe_agent/daemon/client.py)",
                "workload": workload.stats,
            },
            "backends": [asdict(r) for r in results],
            "ed25519": crypto,
            "per_item_stage_us": stages,
            **extra,
            "valid": all(r.valid for r in results),
        }
        args.results_dir.mkdir(parents=True, exist_ok=True)
        path = args.results_dir / f"ingest-{stamp}.json"
        path.write_text(json.dumps(report, indent=2) + "\n")
        console.print(f"results: {path}")
        if not report["valid"]:
            console.print("[bold red]INVALID RUN[/]: a backend failed (above)")
            return 1
        return 0
    except KeyboardInterrupt:
        console.print("[bold red]interrupted[/]: stopping")
        return 130
    except (BenchFailure, psycopg.Error, OSError) as exc:
        console.print(f"[bold red]error:[/] {exc}")
        return 1
    finally:
        for name in pg_databases:
            try:
                drop_pg_database(name)
            except psycopg.Error as exc:
                console.print(f"[bold red]could not drop database {name}:[/] {exc}")
        if args.keep:
            console.print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
