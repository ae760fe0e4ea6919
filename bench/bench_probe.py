#!/usr/bin/env python3
"""Benchmark the volunteer probe's daemon side: spool throughput, CPU per round, idle memory.

One run measures, in this order:

1. the durable spool (``probe_agent.state.spool``), in process: ``put`` of N real
   signed envelopes (realistic ~3 KB measurement documents, signed with
   ``probe_agent.protocol.envelope.sign``), then a drain with ``batch(100)`` + ``ack``;
   puts/s, items/s and bytes per item on disk;
2. one round of ``blockwatch-probe run --once`` against the real collector
   (``blockwatch-collector serve``, SQLite, lab mode, open enrollment) with 200
   targets served by the loopback lab of ``bench_measure.py`` (nginx + unbound);
   the probe's user+sys CPU (``os.wait4`` rusage) and wall time;
3. the daemon (``blockwatch-probe run --interval 1h``): its VmRSS and VmHWM
   3 s after its first round is done, then SIGTERM and its exit status.

Every address is in 127.0.0.0/8: no packet leaves the machine. Every process
started here is stopped, and the temporary directories are removed, on every
path; the whole run is aborted after ``--max-total`` seconds. Results go to a
rich table on stdout and to ``bench/results/probe-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import secrets
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich import box
from rich.console import Console
from rich.table import Table

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import bench_measure as lab_mod  # noqa: E402  (the loopback lab: nginx + unbound)
from procstat import cpu_seconds, status_kb  # noqa: E402

from probe_agent.measure.observations import (  # noqa: E402
    CertificateInfo,
    DNSObservation,
    HTTPObservation,
    Measurement,
    TCPObservation,
    TLSObservation,
)
from probe_agent.protocol.envelope import Envelope, Purpose, sign  # noqa: E402
from probe_agent.state.spool import DEFAULT_BATCH, SPOOL_FILE, Spool, measurement_id_of  # noqa: E402

REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
BIN = REPO / ".venv" / "bin"
PROBE_BIN = BIN / "blockwatch-probe"
COLLECTOR_BIN = BIN / "blockwatch-collector"

console = Console(width=None if sys.stdout.isatty() else 150)


class Abort(RuntimeError):
    """The run cannot go on (a server would not start, a deadline passed)."""


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds
        self.seconds = seconds

    def left(self, cap: float | None = None) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise Abort(f"--max-total {self.seconds:g} s reached")
        return left if cap is None else min(cap, left)


# ------------------------------------------------------------------------ 1. spool


def rfc3339(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def realistic_document(i: int) -> tuple[dict[str, Any], str]:
    """A measurement of a reachable instance, shaped as the probe's (``Measurement.to_dict``).

    DNS A and AAAA over UDP and TCP, a TCP connect, the decoy and the real TLS
    handshakes with a certificate, the HTTP round trip, a declared network;
    unique ids, hashes and timings per item, so that compression is realistic.
    """
    name = f"instance{i}.example.social"
    ip = f"45.76.{i // 250 % 250}.{i % 250 + 1}"
    ip6 = f"2001:19f0:5001:{i % 65536:x}::{i % 7 + 1:x}"
    started = dt.datetime.now(dt.UTC)
    jitter = (i % 97) / 1000

    def t(x: float) -> float:
        return round(x + jitter, 6)

    dns = [
        DNSObservation(
            t0=t(0.0001),
            t=t(0.0213),
            resolver=resolver,
            transport=transport,
            query_type=qtype,
            rcode="NOERROR",
            answers=[ip if qtype == "A" else ip6],
            responses=1,
            queries_sent=1,
        )
        for resolver in ("192.168.1.1:53",)
        for transport in ("udp", "tcp")
        for qtype in ("A", "AAAA")
    ]
    cert = CertificateInfo(
        subject=f"CN={name}",
        issuer="CN=R11,O=Let's Encrypt,C=US",
        sans=(name, f"www.{name}"),
        sha256=secrets.token_hex(32),
        not_before="2026-10-01T00:00:00Z",
        not_after="2026-12-30T00:00:00Z",
        chain_length=2,
    )
    tcp = [TCPObservation(t0=t(0.52), t=t(0.561), ip=ip, port=443)]
    tls = [
        TLSObservation(
            t0=t(0.561),
            t=t(0.612),
            ip=ip,
            port=443,
            sni="example.com",
            decoy=True,
            version="TLSv1.3",
            cipher="TLS_AES_256_GCM_SHA384",
            certificate=cert,
        ),
        TLSObservation(
            t0=t(0.655),
            t=t(0.701),
            ip=ip,
            port=443,
            sni=name,
            cert_valid=True,
            version="TLSv1.3",
            cipher="TLS_AES_256_GCM_SHA384",
            certificate=cert,
        ),
    ]
    http = [
        HTTPObservation(
            t0=t(0.702),
            t=t(0.798),
            url=f"https://{name}/api/v2/instance",
            ip=ip,
            port=443,
            status_code=200,
            body_length=5321 + i % 400,
            body_sha256=secrets.token_hex(32),
            headers={
                "content-type": "application/json; charset=utf-8",
                "server": "Mastodon",
                "cache-control": "max-age=300, public, stale-while-revalidate=30",
                "x-request-id": str(uuid.uuid4()),
                "etag": f'W/"{secrets.token_hex(16)}"',
                "strict-transport-security": "max-age=63072000; includeSubDomains",
            },
            mastodon=True,
            instance_domain=name,
            software="mastodon 4.3.0",
        )
    ]
    m = Measurement(
        measurement_id=str(uuid.uuid4()),
        domain=name,
        port=443,
        scheme="https",
        started_at=rfc3339(started),
        software={"name": "blockwatch-probe", "version": "0.1.0"},
        decoy_sni="example.com",
        runtime=t(0.8),
        dns=dns,
        tcp=tcp,
        tls=tls,
        http=http,
        hints=[],
    )
    doc = {
        "measurement": m.to_dict(),
        "signed_at": rfc3339(dt.datetime.now(dt.UTC)),
        "declared": {"cc": "DE", "asn": 3320},
        "via_proxy": False,
    }
    return doc, m.started_at


def spool_disk_bytes(state: Path) -> int:
    return sum(p.stat().st_size for p in state.iterdir() if p.name in _SPOOL_FILES)


def bench_spool(n: int, root: Path, deadline: Deadline) -> dict[str, Any]:
    key = Ed25519PrivateKey.generate()
    t0 = time.perf_counter()
    items: list[tuple[Envelope, str]] = []
    for i in range(n):
        doc, started = realistic_document(i)
        items.append((sign(key, Purpose.MEASUREMENT, doc), started))
    sign_s = time.perf_counter() - t0
    payload_avg = sum(len(e.payload) for e, _ in items) / n
    state = root / "spool-state"
    with Spool(state) as spool:
        t0 = time.perf_counter()
        for j, (envelope, started) in enumerate(items):
            spool.put(envelope, started, measurement_id_of(envelope))
            if j % 500 == 0:
                deadline.left()
        put_s = time.perf_counter() - t0
        depth = spool.depth()
        counted = spool.bytes_used()
        # While open, as the daemon holds it: spool.db with its -wal and -shm (the
        # last close folds the WAL into the database and deletes it).
        disk_with_wal = spool_disk_bytes(state)
    # The database alone, once the WAL is checkpointed into it.
    with contextlib.closing(sqlite3.connect(state / SPOOL_FILE)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db_bytes = (state / SPOOL_FILE).stat().st_size
    with Spool(state) as spool:
        t0 = time.perf_counter()
        drained = batches = 0
        while batch := spool.batch(DEFAULT_BATCH):
            drained += spool.ack(item.id for item in batch)
            batches += 1
            if batches % 10 == 0:
                deadline.left()
        drain_s = time.perf_counter() - t0
        left = spool.depth()
    return {
        "items": n,
        "stored": depth,
        "sign_per_s": n / sign_s,
        "payload_bytes_avg": payload_avg,
        "put_s": put_s,
        "puts_per_s": n / put_s,
        "put_ms_avg": put_s / n * 1000,
        "drained": drained,
        "left_after_drain": left,
        "drain_s": drain_s,
        "drain_items_per_s": drained / drain_s if drain_s else 0.0,
        "batches": batches,
        "counted_bytes_per_item": counted / n,
        "disk_bytes_per_item_with_wal": disk_with_wal / n,
        "disk_bytes_per_item_db_checkpointed": db_bytes / n,
        "filesystem_dir": str(root),
    }


_SPOOL_FILES = {SPOOL_FILE, SPOOL_FILE + "-wal", SPOOL_FILE + "-shm"}


# ---------------------------------------------------------------- 2. and 3. rounds


def free_port(ip: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


def free_udp_tcp_port(ip: str) -> int:
    for _ in range(50):
        port = free_port(ip)
        if lab_mod.port_free(ip, port, socket.SOCK_DGRAM):
            return port
    raise Abort(f"no free port on {ip}")


def http_ok(url: str) -> bool:
    # Only ever a loopback URL; no proxy, whatever the environment says.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=1) as r:
        return int(r.status) == 200


def db_count(db: Path, table: str) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as c:
        return int(c.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def start_lab(lab: lab_mod.Lab, services: lab_mod.Services, workers: int) -> None:
    """bench_measure's lab without blackbox_exporter: unbound, then nginx."""
    for ip, port, kind in (
        (lab.dns_ip, lab.dns_port, socket.SOCK_DGRAM),
        (lab.dns_ip, lab.dns_port, socket.SOCK_STREAM),
        (lab_mod.target_ip(0), lab.https_port, socket.SOCK_STREAM),
    ):
        if not lab_mod.port_free(ip, port, kind):
            raise Abort(f"{ip}:{port} is already in use")
    conf = lab_mod.write_unbound_conf(lab)
    unbound = services.start(
        "unbound", [lab_mod.UNBOUND, "-d", "-c", str(conf)], lab.root / "unbound" / "out.log"
    )
    lab_mod.wait_until("unbound", lambda: lab_mod.dns_ready(lab), unbound)
    conf = lab_mod.write_nginx_conf(lab, workers)
    nginx = services.start(
        "nginx",
        [lab_mod.NGINX, "-e", "stderr", "-p", str(lab.root / "nginx"), "-c", str(conf)],
        lab.root / "nginx" / "out.log",
    )
    last = lab.n_targets - 1
    lab_mod.wait_until(
        "nginx", lambda: lab_mod.https_ready(lab, 0) and lab_mod.https_ready(lab, last), nginx
    )


def probe_options(lab: lab_mod.Lab, collector_url: str, state_dir: Path) -> list[str]:
    return [
        "--collector",
        collector_url,
        "--state-dir",
        str(state_dir),
        "--resolver",
        lab.resolver,
        "--port",
        str(lab.https_port),
        "--ca-file",
        str(lab.ca),
        "--lab-network",
        "127.0.0.0/8",
        "--timeout",
        "5",
        "--concurrency",
        "32",
    ]


def wait4_until(proc: subprocess.Popen[bytes], timeout: float) -> tuple[int, Any] | None:
    """Reap *proc* with its rusage, or None when it is still running after *timeout*."""
    end = time.monotonic() + timeout
    while True:
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not reap it again
            return proc.returncode, rusage
        if time.monotonic() >= end:
            return None
        time.sleep(0.01)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.returncode is None and proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired, ChildProcessError):
            proc.wait(timeout=5)


def round_line(log: Path) -> str | None:
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if "round:" in ln]
    return lines[-1].split("round:", 1)[1].strip() if lines else None


def accepted_of(line: str | None) -> tuple[int, int, int]:
    """(targets, measured, accepted) from a ``round: 200 targets, 200 measured, ...`` line."""
    if not line:
        return 0, 0, 0
    words = line.replace(",", "").split()
    found = {words[k + 1]: int(words[k]) for k in range(len(words) - 1) if words[k].isdigit()}
    return found.get("targets", 0), found.get("measured", 0), found.get("accepted", 0)


def bench_once(
    lab: lab_mod.Lab, url: str, root: Path, db: Path, collector: lab_mod.Service, dl: Deadline
) -> dict[str, Any]:
    state = root / "once-state"
    cmd = [str(PROBE_BIN), "run", "--once", *probe_options(lab, url, state)]
    out, err = root / "once.out", root / "once.err"
    before = db_count(db, "measurements")
    collector_cpu0 = collector.cpu()
    with out.open("wb") as fo, err.open("wb") as fe:
        t0 = time.monotonic()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=fo,
            stderr=fe,
            env=lab_mod.child_env(),
            start_new_session=True,
        )
    try:
        reaped = wait4_until(proc, dl.left(180))
        wall = time.monotonic() - t0
        if reaped is None:
            raise Abort(f"probe --once still running after {wall:.0f} s")
    finally:
        kill_group(proc)
    code, ru = reaped
    collector_cpu = collector.cpu() - collector_cpu0
    line = round_line(err)
    targets, measured, accepted = accepted_of(line)
    stored = db_count(db, "measurements") - before
    return {
        "command": shlex.join(cmd),
        "exit_code": code,
        "round_line": line,
        "targets": targets,
        "measured": measured,
        "accepted": accepted,
        "stored_by_collector": stored,
        "wall_s": wall,
        "user_s": ru.ru_utime,
        "sys_s": ru.ru_stime,
        "cpu_s": ru.ru_utime + ru.ru_stime,
        "cpu_ms_per_target": (ru.ru_utime + ru.ru_stime) / max(1, targets) * 1000,
        "maxrss_kb": ru.ru_maxrss,
        "collector_cpu_s": collector_cpu,
        "stderr_tail": err.read_text(errors="replace")[-1500:],
    }


def bench_daemon(
    lab: lab_mod.Lab, url: str, root: Path, db: Path, expect: int, dl: Deadline
) -> dict[str, Any]:
    state = root / "daemon-state"
    cmd = [str(PROBE_BIN), "run", "--interval", "1h", *probe_options(lab, url, state)]
    err = root / "daemon.err"
    before = db_count(db, "measurements")
    with err.open("wb") as fe:
        t0 = time.monotonic()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=fe,
            stderr=subprocess.STDOUT,
            env=lab_mod.child_env(),
            start_new_session=True,
        )
    result: dict[str, Any] = {"command": shlex.join(cmd)}
    try:
        end = time.monotonic() + dl.left(180)
        while True:
            if proc.poll() is not None:
                raise Abort(f"daemon exited ({proc.returncode}): {err.read_text()[-1500:]}")
            line = round_line(err)
            stored = db_count(db, "measurements") - before
            if line is not None and stored >= expect:
                break
            if time.monotonic() > end:
                raise Abort(f"daemon's first round not done after 180 s ({stored} stored)")
            time.sleep(0.1)
        result["first_round_s"] = time.monotonic() - t0
        result["round_line"] = line
        result["stored_by_collector"] = stored
        state_json = json.loads((state / "state.json").read_text())
        result["state_last_checkin_at"] = state_json.get("last_checkin_at")
        result["spool_depth_after_round"] = db_count(state / SPOOL_FILE, "items")
        time.sleep(min(3.0, dl.left()))
        children = lab_mod.children_of(proc.pid)
        result["children"] = len(children)
        result["idle_rss_kb"] = status_kb(proc.pid, "VmRSS")
        result["idle_hwm_kb"] = status_kb(proc.pid, "VmHWM")
        result["idle_pss_kb"] = lab_mod.smaps_pss_kb(proc.pid)
        result["children_rss_kb"] = sum(status_kb(c, "VmRSS") for c in children)
        cpu0 = cpu_seconds(proc.pid)
        time.sleep(min(2.0, dl.left()))
        result["idle_cpu_s_per_2s"] = cpu_seconds(proc.pid) - cpu0
        t_term = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        reaped = wait4_until(proc, min(20.0, dl.left()))
        result["sigterm_exit_s"] = time.monotonic() - t_term
        if reaped is None:
            result["exit_code"] = None
            result["exited_within_20s"] = False
        else:
            code, ru = reaped
            result["exit_code"] = code
            result["exited_within_20s"] = True
            result["total_cpu_s"] = ru.ru_utime + ru.ru_stime
    finally:
        kill_group(proc)
        result["log_tail"] = err.read_text(errors="replace")[-1500:] if err.exists() else ""
    return result


# ---------------------------------------------------------------------- reporting


def render(
    spool: dict[str, Any] | None,
    once: dict[str, Any] | None,
    d: dict[str, Any] | None,
    targets: int,
) -> None:
    table = Table(title="blockwatch-probe: spool, round, daemon", box=box.SIMPLE_HEAVY)
    table.add_column("what")
    table.add_column("figure", justify="right")
    table.add_column("note")
    if spool:
        n = spool["items"]
        table.add_row(
            "spool put",
            f"{spool['puts_per_s']:,.0f} puts/s",
            f"{n:,} envelopes, {spool['put_ms_avg']:.2f} ms each (fsynced)",
        )
        table.add_row(
            "spool drain",
            f"{spool['drain_items_per_s']:,.0f} items/s",
            f"batch({DEFAULT_BATCH}) + ack, {spool['batches']} batches, "
            f"{spool['left_after_drain']} left",
        )
        table.add_row("signed payload", f"{spool['payload_bytes_avg']:,.0f} B", "average, JSON")
        table.add_row(
            "counted / item",
            f"{spool['counted_bytes_per_item']:,.0f} B",
            "bytes_used() / items (compressed payload + sig + ids)",
        )
        table.add_row(
            "on disk / item",
            f"{spool['disk_bytes_per_item_with_wal']:,.0f} B",
            "spool.db + -wal + -shm after the puts, spool open",
        )
        table.add_row(
            "on disk / item (ckpt)",
            f"{spool['disk_bytes_per_item_db_checkpointed']:,.0f} B",
            "spool.db alone after wal_checkpoint(TRUNCATE)",
        )
        table.add_row(
            "signing (reference)",
            f"{spool['sign_per_s']:,.0f} /s",
            "build + json + Ed25519, not in the put figure",
        )
    if once:
        ok = once["accepted"] == once["targets"] == targets and once["exit_code"] == 0
        table.add_row(
            "round wall",
            f"{once['wall_s']:.2f} s",
            "run --once, process start to exit (incl. check-in, submit)",
        )
        table.add_row(
            "round CPU",
            f"{once['cpu_s']:.2f} s",
            f"user {once['user_s']:.2f} + sys {once['sys_s']:.2f}; "
            f"{once['cpu_ms_per_target']:.1f} ms/target",
        )
        table.add_row("round max RSS", f"{once['maxrss_kb'] / 1024:.1f} MiB", "ru_maxrss")
        table.add_row("collector CPU", f"{once['collector_cpu_s']:.2f} s", "during the round")
        table.add_row(
            "round result",
            "[green]ok[/]" if ok else "[red]FAIL[/]",
            f"exit {once['exit_code']}; {once['round_line']}; "
            f"collector +{once['stored_by_collector']}",
        )
    if d:
        if "idle_rss_kb" in d:
            table.add_row(
                "daemon idle RSS",
                f"{d['idle_rss_kb'] / 1024:.1f} MiB",
                f"VmRSS 3 s after round 1 ({d['first_round_s']:.1f} s); "
                f"PSS {d['idle_pss_kb'] / 1024:.1f} MiB; {d['children']} children",
            )
            table.add_row("daemon VmHWM", f"{d['idle_hwm_kb'] / 1024:.1f} MiB", "peak RSS")
            table.add_row("daemon idle CPU", f"{d['idle_cpu_s_per_2s']:.2f} s", "over 2 s idle")
        if "exit_code" in d:
            ok = d["exit_code"] == 0 and d["exited_within_20s"]
            table.add_row(
                "SIGTERM",
                "[green]ok[/]" if ok else "[red]FAIL[/]",
                f"exit {d['exit_code']} after {d['sigterm_exit_s']:.2f} s; "
                f"round: {d.get('round_line')}",
            )
    console.print(table)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "kernel": platform.release()}
    for name, cmd in (
        ("probe", [str(PROBE_BIN), "version"]),
        ("collector", [str(COLLECTOR_BIN), "version"]),
    ):
        with contextlib.suppress(Exception):
            out[name] = subprocess.run(
                cmd,
                check=False,
                capture_output=True,
                text=True,
                timeout=20,
                env=lab_mod.child_env(),
            ).stdout.strip()
    return out


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--items", type=int, default=5000, help="spool envelopes (5000)")
    ap.add_argument("--targets", type=int, default=200, help="targets of the round (200)")
    ap.add_argument("--max-total", type=float, default=300.0, help="abort after (s)")
    ap.add_argument("--dns-ip", default="127.53.0.2", help="loopback address of unbound")
    ap.add_argument("--https-port", type=int, default=18444)
    ap.add_argument("--nginx-workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = ap.parse_args(argv)
    if not 1 <= args.targets <= 1000:
        ap.error("--targets must be 1..1000")
    if not args.dns_ip.startswith("127."):
        ap.error("--dns-ip must be a loopback address")
    return args


def _sigterm(_signo: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for signo in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signo, _sigterm)
    if os.geteuid() != 0:
        sys.exit("run as root: nginx runs as root and binds 200 loopback addresses")
    for binary in (PROBE_BIN, COLLECTOR_BIN, Path(lab_mod.NGINX), Path(lab_mod.UNBOUND)):
        if not binary.exists():
            sys.exit(f"{binary} not found")
    dl = Deadline(args.max_total)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    bench_cmd = shlex.join([sys.executable, *sys.argv])
    tmp = Path(tempfile.mkdtemp(prefix="bw-bench-probe-"))
    services = lab_mod.Services()
    spool = once = daemon = None
    errors: list[str] = []
    try:
        console.print(f"[bold]1. spool[/]: {args.items:,} signed envelopes ...")
        spool = bench_spool(args.items, tmp, dl)
        shutil.rmtree(tmp / "spool-state", ignore_errors=True)

        console.print(f"[bold]2. lab[/]: {args.targets} targets, collector ...")
        ca, cert, key = lab_mod.make_pki(tmp)
        lab = lab_mod.Lab(
            root=tmp,
            n_targets=args.targets,
            https_port=args.https_port,
            dns_ip=args.dns_ip,
            dns_port=free_udp_tcp_port(args.dns_ip),
            blackbox_addr="127.0.0.1:0",  # not started here
            ca=ca,
            cert=cert,
            key=key,
        )
        start_lab(lab, services, args.nginx_workers)
        db = tmp / "c.db"
        db_url = f"sqlite:///{db}"
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        collector = services.start(
            "collector",
            [
                str(COLLECTOR_BIN),
                "serve",
                "--database-url",
                db_url,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--mode",
                "lab",
                "--open-enrollment",
                "--no-control",
            ],
            tmp / "collector.log",
            env=lab_mod.child_env(),
        )
        lab_mod.wait_until("collector", lambda: http_ok(url + "/healthz"), collector, 60)
        collector.extra_pids = lab_mod.children_of(collector.proc.pid)
        domains = [lab_mod.domain(i) for i in range(args.targets)]
        added = subprocess.run(
            [str(COLLECTOR_BIN), "targets", "add", *domains, "--database-url", db_url],
            check=False,
            capture_output=True,
            text=True,
            timeout=dl.left(60),
            env=lab_mod.child_env(),
        )
        if added.returncode != 0:
            raise Abort(f"targets add failed ({added.returncode}): {added.stderr[-1500:]}")
        n_targets = db_count(db, "targets")
        console.print(f"   collector {url} with {n_targets} targets; DNS {lab.resolver}")

        console.print("[bold]2. round[/]: blockwatch-probe run --once ...")
        once = bench_once(lab, url, tmp, db, collector, dl)
        if not (once["exit_code"] == 0 and once["accepted"] == args.targets):
            errors.append(f"run --once: exit {once['exit_code']}, round: {once['round_line']}")
            console.print(once["stderr_tail"])

        console.print("[bold]3. daemon[/]: blockwatch-probe run --interval 1h ...")
        daemon = bench_daemon(lab, url, tmp, db, args.targets, dl)
        if daemon.get("exit_code") != 0 or not daemon.get("exited_within_20s"):
            errors.append(f"daemon: exit {daemon.get('exit_code')} after SIGTERM")
        collector.check_alive()
    except KeyboardInterrupt:
        errors.append("interrupted")
    except (Abort, RuntimeError, OSError, subprocess.SubprocessError) as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        services.close()
        if args.keep:
            console.print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    render(spool, once, daemon, args.targets)
    report = {
        "timestamp": stamp,
        "bench_command": bench_cmd,
        "machine": {"cpus": os.cpu_count(), "versions": versions()},
        "spool": spool,
        "round": once,
        "daemon": daemon,
        "errors": errors,
        "valid": not errors,
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"probe-{stamp}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"results: {path}")
    for e in errors:
        console.print(f"[bold red]error:[/] {e}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
