#!/usr/bin/env python3
"""Benchmark ``blockwatch-probe measure`` against Prometheus blackbox_exporter, on loopback.

One run sets up a shared lab and measures both tools in it, side by side:

- 1,000 targets ``t0000.bench.test`` ... ``t0999.bench.test``, each on its own
  loopback address (127.1.x.y), served by one nginx (Debian's) over HTTPS with
  a certificate for ``*.bench.test`` from a test CA made here (ECDSA P-256),
  answering a Mastodon-like ``/api/v2/instance``;
- unbound on 127.53.0.1:53, authoritative for bench.test (A for each target,
  empty NOERROR for AAAA, everything else refused: nothing is ever recursed);
- the probe, run as its console script over the 1,000 domains (DNS A+AAAA over
  UDP and TCP, TCP connect, decoy-SNI TLS, validated TLS, HTTP API);
- blackbox_exporter (module ``tls_connect``: DNS A, TCP connect, validated
  TLS; and ``http_2xx`` for reference), driven by an aiohttp client at the
  same concurrency. It runs in a private mount namespace where a temporary
  resolv.conf naming the lab's DNS server is bind-mounted over /etc/resolv.conf
  (the machine's own file is never touched).

Every address is in 127.0.0.0/8: no packet leaves the machine. Results go to a
rich table on stdout and to ``bench/results/measure-<timestamp>.json``. See
bench/README.md for how to read them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import ipaddress
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import dns.message
import dns.query
import dns.rcode
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from procstat import cpu_seconds, status_kb
from rich import box
from rich.console import Console
from rich.table import Table

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
PROBE_BIN = REPO / ".venv" / "bin" / "blockwatch-probe"

ZONE = "bench.test"
NGINX = "/usr/sbin/nginx"
UNBOUND = "/usr/sbin/unbound"
BLACKBOX = "/usr/bin/prometheus-blackbox-exporter"
DEBIAN_PACKAGES = {
    NGINX: "nginx-light",
    UNBOUND: "unbound",
    BLACKBOX: "prometheus-blackbox-exporter",
}
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
API_BODY = '{"domain":"$host","uri":"$host","title":"bench","version":"4.3.0"}'

# Wide enough for the tables when stdout is a file or a pipe (make bench | tee).
console = Console(width=None if sys.stdout.isatty() else 170)


# --------------------------------------------------------------------------- setup


def ensure_debian_packages() -> None:
    """Install the servers with apt-get when their binaries are missing (root only)."""
    missing = sorted({pkg for path, pkg in DEBIAN_PACKAGES.items() if not Path(path).exists()})
    if not shutil.which("unshare"):
        missing.append("util-linux")
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"missing Debian packages {missing}: run as root, or apt-get install them")
    console.print(f"[bold]installing Debian packages:[/] {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", *missing], check=True, env=env)


def domain(i: int) -> str:
    return f"t{i:04d}.{ZONE}"


def target_ip(i: int) -> str:
    """127.1.0.1 ... 127.1.3.250 for 1,000 targets (never .0 or .255)."""
    return f"127.1.{i // 250}.{i % 250 + 1}"


def make_pki(dest: Path) -> tuple[Path, Path, Path]:
    """A test CA and one ECDSA P-256 certificate for ``*.bench.test``: (ca, cert, key)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "blockwatch bench test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"*.{ZONE}")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(f"*.{ZONE}")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = dest / "ca.pem", dest / "server.pem", dest / "server.key"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return ca_path, cert_path, key_path


@dataclass(frozen=True)
class Lab:
    """Where everything lives for one run (a temporary directory) and on which addresses."""

    root: Path
    n_targets: int
    https_port: int
    dns_ip: str
    dns_port: int
    blackbox_addr: str
    ca: Path
    cert: Path
    key: Path

    @property
    def domains_file(self) -> Path:
        return self.root / "domains.txt"

    @property
    def resolver(self) -> str:
        return f"{self.dns_ip}:{self.dns_port}"


def write_nginx_conf(lab: Lab, workers: int) -> Path:
    prefix = lab.root / "nginx"
    for sub in ("logs", "tmp"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    listens = "\n".join(
        f"        listen {target_ip(i)}:{lab.https_port} ssl backlog=4096;"
        for i in range(lab.n_targets)
    )
    tmp = prefix / "tmp"
    conf = f"""\
# One server on every target address: per-address listen sockets, so nothing
# listens on 0.0.0.0 (a wildcard socket would be reachable from outside).
daemon off;
master_process on;
user root;
worker_processes {workers};
worker_rlimit_nofile 65536;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{
    worker_connections 16384;
}}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server_tokens off;
    keepalive_requests 100;
    keepalive_timeout 10s;
    server {{
{listens}
        server_name _;
        ssl_certificate {lab.cert};
        ssl_certificate_key {lab.key};
        ssl_protocols TLSv1.2 TLSv1.3;
        # Every handshake in the benchmark is a full one, as a probe's are.
        ssl_session_cache off;
        ssl_session_tickets off;
        location = /api/v2/instance {{
            default_type application/json;
            return 200 '{API_BODY}';
        }}
        location / {{
            return 404;
        }}
    }}
}}
"""
    path = prefix / "nginx.conf"
    path.write_text(conf)
    return path


def write_unbound_conf(lab: Lab) -> Path:
    base = lab.root / "unbound"
    base.mkdir(parents=True, exist_ok=True)
    records = "\n".join(
        f'    local-data: "{domain(i)}. 60 IN A {target_ip(i)}"' for i in range(lab.n_targets)
    )
    conf = f"""\
server:
    interface: {lab.dns_ip}@{lab.dns_port}
    port: {lab.dns_port}
    do-ip4: yes
    do-ip6: no
    do-udp: yes
    do-tcp: yes
    num-threads: 1
    access-control: 127.0.0.0/8 allow
    username: ""
    chroot: ""
    directory: "{base}"
    pidfile: "{base}/unbound.pid"
    use-syslog: no
    logfile: ""
    verbosity: 0
    # No validator: no trust anchor to fetch. Nothing is ever recursed: the only
    # zone answered is bench.test, every other name is refused locally, and
    # outgoing queries could only leave from loopback anyway.
    module-config: "iterator"
    outgoing-interface: 127.0.0.1
    do-not-query-localhost: yes
    incoming-num-tcp: 2048
    tcp-idle-timeout: 10000
    so-reuseport: yes
    minimal-responses: yes
    local-zone: "." refuse
    local-zone: "{ZONE}." static
{records}
"""
    path = base / "unbound.conf"
    path.write_text(conf)
    return path


def write_blackbox_conf(lab: Lab, timeout: float) -> tuple[Path, Path]:
    base = lab.root / "blackbox"
    base.mkdir(parents=True, exist_ok=True)
    conf = f"""\
modules:
  tls_connect:
    prober: tcp
    timeout: {timeout:g}s
    tcp:
      preferred_ip_protocol: ip4
      ip_protocol_fallback: false
      tls: true
      tls_config:
        ca_file: {lab.ca}
  http_2xx:
    prober: http
    timeout: {timeout:g}s
    http:
      preferred_ip_protocol: ip4
      ip_protocol_fallback: false
      method: GET
      valid_status_codes: [200]
      fail_if_not_ssl: true
      fail_if_body_not_matches_regexp: ['"version"']
      tls_config:
        ca_file: {lab.ca}
"""
    path = base / "blackbox.yml"
    path.write_text(conf)
    resolv = base / "resolv.conf"
    # resolv.conf cannot name a port: this is why the lab's DNS listens on port 53.
    resolv.write_text(f"nameserver {lab.dns_ip}\noptions timeout:2 attempts:2\n")
    return path, resolv


# ------------------------------------------------------------------ process helpers


def smaps_pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        if int(raw[raw.rindex(")") + 2 :].split()[1]) == pid:
            found.append(int(entry.name))
    return found


@dataclass
class Service:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    extra_pids: list[int] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        return [self.proc.pid, *self.extra_pids]

    def cpu(self) -> float:
        return sum(cpu_seconds(p) for p in self.pids)

    def rss_kb(self) -> int:
        return sum(status_kb(p, "VmRSS") for p in self.pids)

    def hwm_kb(self) -> int:
        return sum(status_kb(p, "VmHWM") for p in self.pids)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{tail}")


class Services:
    """Starts the servers; stops every one of them on every path (see ``close``)."""

    def __init__(self) -> None:
        self.items: list[Service] = []

    def start(
        self, name: str, cmd: list[str], log: Path, env: dict[str, str] | None = None
    ) -> Service:
        with log.open("wb") as out:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # own process group: stopped as a whole
            )
        svc = Service(name, proc, log)
        self.items.append(svc)
        return svc

    def close(self) -> None:
        for svc in reversed(self.items):
            if svc.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(svc.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for svc in reversed(self.items):
            try:
                svc.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(svc.proc.pid, signal.SIGKILL)
                svc.proc.wait(timeout=5)
        self.items.clear()


def child_env() -> dict[str, str]:
    """The environment for the tools: no proxy (every target is on loopback), no
    BLOCKWATCH_* option that would change the probe's command line."""
    drop = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
    return {
        k: v
        for k, v in os.environ.items()
        if k.lower() not in drop and not k.startswith("BLOCKWATCH_")
    }


def wait_until(what: str, check: Callable[[], bool], svc: Service, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        svc.check_alive()
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.05)
    svc.check_alive()
    raise RuntimeError(f"{what} not ready after {timeout:g}s (log: {svc.log})")


def port_free(ip: str, port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind((ip, port))
        except OSError:
            return False
    return True


def dns_ready(lab: Lab) -> bool:
    q = dns.message.make_query(domain(lab.n_targets - 1), "A")
    r = dns.query.udp(q, lab.dns_ip, port=lab.dns_port, timeout=0.5)
    q6 = dns.message.make_query(domain(0), "AAAA")
    rt = dns.query.tcp(q6, lab.dns_ip, port=lab.dns_port, timeout=0.5)
    return (
        r.rcode() == dns.rcode.NOERROR
        and r.answer[0][0].address == target_ip(lab.n_targets - 1)
        and rt.rcode() == dns.rcode.NOERROR
        and not rt.answer
    )


def https_ready(lab: Lab, i: int) -> bool:
    ctx = ssl.create_default_context(cafile=str(lab.ca))
    with (
        socket.create_connection((target_ip(i), lab.https_port), timeout=1) as raw,
        ctx.wrap_socket(raw, server_hostname=domain(i)) as tls,
    ):
        tls.sendall(f"GET /api/v2/instance HTTP/1.1\r\nHost: {domain(i)}\r\n\r\n".encode())
        return b'"version"' in tls.recv(4096)


def blackbox_ready(lab: Lab) -> bool:
    host, port = lab.blackbox_addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=1) as s:
        s.sendall(b"GET /-/healthy HTTP/1.0\r\n\r\n")
        return s.recv(64).startswith(b"HTTP/1.0 200")


def start_lab(lab: Lab, services: Services, args: argparse.Namespace) -> dict[str, Service]:
    bb_ip, bb_port = lab.blackbox_addr.rsplit(":", 1)
    checks: list[tuple[str, int, int]] = [
        (lab.dns_ip, lab.dns_port, socket.SOCK_DGRAM),
        (lab.dns_ip, lab.dns_port, socket.SOCK_STREAM),
        (target_ip(0), lab.https_port, socket.SOCK_STREAM),
        (bb_ip, int(bb_port), socket.SOCK_STREAM),
    ]
    for ip, port, kind in checks:
        if not port_free(ip, port, kind):
            raise RuntimeError(f"{ip}:{port} is already in use")

    unbound_conf = write_unbound_conf(lab)
    unbound = services.start(
        "unbound", [UNBOUND, "-d", "-c", str(unbound_conf)], lab.root / "unbound" / "out.log"
    )
    wait_until("unbound", lambda: dns_ready(lab), unbound)

    nginx_conf = write_nginx_conf(lab, args.nginx_workers)
    nginx = services.start(
        "nginx",
        [NGINX, "-e", "stderr", "-p", str(lab.root / "nginx"), "-c", str(nginx_conf)],
        lab.root / "nginx" / "out.log",
    )
    wait_until("nginx", lambda: https_ready(lab, 0) and https_ready(lab, lab.n_targets - 1), nginx)
    nginx.extra_pids = children_of(nginx.proc.pid)

    bb_conf, resolv = write_blackbox_conf(lab, args.timeout)
    # A private mount namespace (same network namespace, so the same loopback):
    # inside it, our resolv.conf is bind-mounted over /etc/resolv.conf; the mount
    # vanishes with the namespace. `unshare` and `sh` exec, so the pid is the
    # exporter's. GODEBUG=netdns=go: Go's own resolver (reads resolv.conf), not libc.
    script = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
    bb_cmd = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        script,
        str(resolv),
        BLACKBOX,
        f"--config.file={bb_conf}",
        f"--web.listen-address={lab.blackbox_addr}",
        "--log.level=warn",
    ]
    env = {**child_env(), "GODEBUG": "netdns=go", "GOMAXPROCS": str(os.cpu_count() or 2)}
    blackbox = services.start("blackbox_exporter", bb_cmd, lab.root / "blackbox" / "out.log", env)
    wait_until("blackbox_exporter", lambda: blackbox_ready(lab), blackbox)
    return {"dns": unbound, "nginx": nginx, "blackbox": blackbox}


# ---------------------------------------------------------------------- the phases


@dataclass
class Phase:
    tool: str
    what: str
    concurrency: int
    targets: int
    steps: str
    wall_s: float = 0.0
    rate: float = 0.0
    results: int = 0
    ok: int = 0
    aborted: bool = False
    tool_cpu_s: float = 0.0
    driver_cpu_s: float = 0.0
    nginx_cpu_s: float = 0.0
    dns_cpu_s: float = 0.0
    peak_rss_mb: float = 0.0
    round: int = 1
    command: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


class ServerCPU:
    def __init__(self, svcs: dict[str, Service]) -> None:
        self.svcs = svcs
        self.start = {k: s.cpu() for k, s in svcs.items()}

    def delta(self, key: str) -> float:
        return round(self.svcs[key].cpu() - self.start[key], 3)


def clean_measurement(m: dict[str, Any], expected_ip: str) -> tuple[bool, list[str]]:
    """Whether a measurement shows no failure at all, and what went wrong if not.

    The lab has no IPv6, so an AAAA query's empty NOERROR (``dns_no_answer``) is
    the right answer, not a failure; every other step must have ``failure: null``.
    """
    problems: list[str] = []
    for d in m.get("dns", []):
        if d["query_type"] == "AAAA":
            if d["failure"] not in (None, "dns_no_answer") or d["answers"]:
                problems.append(f"dns {d['transport']} AAAA: {d['failure']}")
        elif d["failure"] or d["answers"] != [expected_ip] or d["late_answers"]:
            problems.append(f"dns {d['transport']} A: {d['failure'] or d['answers']}")
    for step in ("tcp", "tls", "http"):
        problems += [f"{step}: {o['failure']}" for o in m.get(step, []) if o["failure"]]
    # One tcp observation per address (the second connection's connect is only
    # reported when it fails), two handshakes: decoy SNI, then the real name.
    if len(m.get("tcp", [])) != 1 or len(m.get("tls", [])) != 2:
        problems.append(f"steps: {len(m.get('tcp', []))} tcp, {len(m.get('tls', []))} tls")
    http = m.get("http", [])
    if not http or not http[-1]["mastodon"] or http[-1]["instance_domain"] != m["domain"]:
        problems.append("http: no Mastodon answer")
    if m.get("hints"):
        problems.append(f"hints: {m['hints']}")
    return not problems, problems


def parse_rfc3339(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def run_probe_command(lab: Lab, concurrency: int, timeout: float) -> list[str]:
    return [
        str(PROBE_BIN),
        "measure",
        "--input",
        str(lab.domains_file),
        "--resolver",
        lab.resolver,
        "--port",
        str(lab.https_port),
        "--ca-file",
        str(lab.ca),
        "--lab-network",
        "127.0.0.0/8",
        "--concurrency",
        str(concurrency),
        "--timeout",
        f"{timeout:g}",
        "--format",
        "jsonl",
    ]


def run_measured(
    cmd: list[str],
    out_path: Path,
    err_path: Path,
    svcs: dict[str, Service],
    args: argparse.Namespace,
    phase: Phase,
) -> subprocess.Popen[bytes]:
    """Run *cmd* (stdout to *out_path*), filling *phase*'s wall time, CPU and memory."""
    env = child_env()
    servers = ServerCPU(svcs)
    status: dict[str, Any] = {}
    with out_path.open("wb") as out, err_path.open("wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, start_new_session=True
        )

        def reap() -> None:
            # wait4 gives this child's own peak RSS and CPU, exactly, after it exits.
            _, st, ru = os.wait4(proc.pid, 0)
            status.update(t=time.perf_counter(), status=st, rusage=ru)

        reaper = threading.Thread(target=reap, daemon=True)
        reaper.start()
        # The probe may fork workers: its memory is the whole tree's. PSS counts
        # pages shared after fork once, split between the processes sharing them.
        tree_peak = {"pss_kb": 0, "rss_kb": 0, "processes": 0}
        sampling = threading.Event()

        def sample_tree() -> None:
            while not sampling.wait(0.1):
                pids = [proc.pid, *children_of(proc.pid)]
                pss = sum(smaps_pss_kb(p) for p in pids)
                rss = sum(status_kb(p, "VmRSS") for p in pids)
                if pss > tree_peak["pss_kb"]:
                    tree_peak.update(pss_kb=pss, rss_kb=rss, processes=len(pids))

        sampler = threading.Thread(target=sample_tree, daemon=True)
        sampler.start()
        try:
            reaper.join(args.phase_timeout)
        finally:
            if reaper.is_alive():
                phase.aborted = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                reaper.join(10)
            sampling.set()
            sampler.join(5)
    proc.returncode = os.waitstatus_to_exitcode(status["status"]) if status else -9
    phase.wall_s = round(status.get("t", time.perf_counter()) - t0, 3)
    phase.nginx_cpu_s, phase.dns_cpu_s = servers.delta("nginx"), servers.delta("dns")
    if "rusage" in status:
        ru = status["rusage"]
        phase.tool_cpu_s = round(ru.ru_utime + ru.ru_stime, 3)
        # The largest single process (wait4 reports its own and its reaped children's max).
        phase.detail["largest_process_rss_mb"] = round(ru.ru_maxrss / 1024, 1)  # KiB on Linux
        phase.detail["user_s"], phase.detail["sys_s"] = round(ru.ru_utime, 3), round(ru.ru_stime, 3)
    # The goal is on the whole probe: every process of its tree, sampled every 100 ms.
    largest_kb = status["rusage"].ru_maxrss if "rusage" in status else 0
    phase.peak_rss_mb = round(max(tree_peak["pss_kb"], largest_kb) / 1024, 1)
    phase.detail["tree_peak_pss_mb"] = round(tree_peak["pss_kb"] / 1024, 1)
    phase.detail["tree_rss_at_peak_mb"] = round(tree_peak["rss_kb"] / 1024, 1)
    phase.detail["processes_at_peak"] = tree_peak["processes"]

    return proc


def run_probe(
    lab: Lab, svcs: dict[str, Service], concurrency: int, args: argparse.Namespace
) -> Phase:
    cmd = run_probe_command(lab, concurrency, args.timeout)
    phase = Phase(
        "blockwatch-probe",
        "measure",
        concurrency,
        lab.n_targets,
        "DNS A+AAAA udp+tcp, TCP, TLS decoy, TCP, TLS, HTTP",
        command=shlex.join(cmd),
    )
    out_path = lab.root / f"probe-c{concurrency}.jsonl"
    err_path = lab.root / f"probe-c{concurrency}.err"
    proc = run_measured(cmd, out_path, err_path, svcs, args, phase)

    expected = {domain(i): target_ip(i) for i in range(lab.n_targets)}
    problems: Counter[str] = Counter()
    seen: set[str] = set()
    starts, ends, runtimes = [], [], []
    bad_lines = 0
    for line in out_path.read_text(errors="replace").splitlines():
        try:
            m = json.loads(line)
        except ValueError:
            bad_lines += 1
            continue
        seen.add(m["domain"])
        ok, why = clean_measurement(m, expected.get(m["domain"], "?"))
        phase.ok += ok
        problems.update(why)
        start = parse_rfc3339(m["started_at"])
        starts.append(start)
        ends.append(start + m["runtime"])
        runtimes.append(m["runtime"])
    phase.results = len(seen)
    phase.rate = round(phase.results / phase.wall_s, 1) if phase.wall_s else 0.0
    runtimes.sort()
    phase.detail.update(
        exit_code=proc.returncode,
        missing_domains=sorted(set(expected) - seen)[:10],
        missing_count=len(set(expected) - seen),
        unparsable_lines=bad_lines,
        problems=dict(problems.most_common(15)),
        stderr_tail=err_path.read_text(errors="replace")[-1500:],
    )
    if starts:
        # The engine's own window: first measurement's start to last one's end
        # (leaves out interpreter start-up and imports).
        window = max(ends) - min(starts)
        phase.detail.update(
            engine_window_s=round(window, 3),
            engine_rate=round(len(starts) / window, 1) if window > 0 else None,
            startup_s=round(phase.wall_s - window, 3),
            runtime_p50_s=round(runtimes[len(runtimes) // 2], 3),
            runtime_p95_s=round(runtimes[int(len(runtimes) * 0.95)], 3),
            runtime_max_s=round(runtimes[-1], 3),
        )
    return phase


FLOOR_SCRIPT = BENCH_DIR / "tls_floor.py"
FLOOR_STEPS = {
    2: "TCP, TLS decoy, TCP, TLS (the probe's own TLS code, nothing else)",
    1: "TCP, TLS (the probe's own TLS code; blackbox tls_connect's work minus DNS)",
}


def run_floor(
    lab: Lab, svcs: dict[str, Service], concurrency: int, handshakes: int, args: argparse.Namespace
) -> Phase:
    """The probe's TLS steps alone (bench/tls_floor.py): an upper bound for its rate."""
    targets = lab.root / "floor-targets.txt"
    if not targets.exists():
        targets.write_text("".join(f"{domain(i)} {target_ip(i)}\n" for i in range(lab.n_targets)))
    cmd = [
        str(PROBE_BIN.parent / "python"),
        str(FLOOR_SCRIPT),
        "--targets",
        str(targets),
        "--port",
        str(lab.https_port),
        "--ca-file",
        str(lab.ca),
        "--concurrency",
        str(concurrency),
        "--handshakes",
        str(handshakes),
        "--timeout",
        f"{args.timeout:g}",
    ]
    phase = Phase(
        "probe TLS only",
        f"{handshakes} handshake{'s' if handshakes > 1 else ''}",
        concurrency,
        lab.n_targets,
        FLOOR_STEPS[handshakes],
        command=shlex.join(cmd),
    )
    out_path = lab.root / f"floor-{handshakes}-c{concurrency}.jsonl"
    err_path = lab.root / f"floor-{handshakes}-c{concurrency}.err"
    proc = run_measured(cmd, out_path, err_path, svcs, args, phase)
    seen: set[str] = set()
    errors: Counter[str] = Counter()
    for line in out_path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            row = json.loads(line)
            seen.add(row["domain"])
            if row["ok"]:
                phase.ok += 1
            else:
                errors[str(row["error"])[:80]] += 1
    phase.results = len(seen)
    phase.rate = round(phase.results / phase.wall_s, 1) if phase.wall_s else 0.0
    phase.detail.update(
        exit_code=proc.returncode,
        missing_count=lab.n_targets - len(seen),
        problems=dict(errors.most_common(5)),
        stderr_tail=err_path.read_text(errors="replace")[-1500:],
    )
    return phase


@dataclass
class DriverTally:
    """What the blackbox driver saw; filled in place, so an aborted phase keeps its counts."""

    ok: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    durations: list[float] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


async def _drive_blackbox(
    lab: Lab, module: str, targets: list[str], concurrency: int, timeout: float, tally: DriverTally
) -> None:
    url = f"http://{lab.blackbox_addr}/probe"
    pending = iter(targets)
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    client_timeout = aiohttp.ClientTimeout(total=timeout + 10)
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:

        async def worker() -> None:
            for target in pending:
                try:
                    params = {"target": target, "module": module}
                    async with session.get(url, params=params) as resp:
                        body = await resp.text()
                        status = resp.status
                except (aiohttp.ClientError, TimeoutError) as exc:
                    tally.outcomes[f"driver: {type(exc).__name__}"] += 1
                    tally.failed.append(target)
                    continue
                if status != 200:
                    tally.outcomes[f"http {status}"] += 1
                    tally.failed.append(target)
                    continue
                metrics = {}
                for line in body.splitlines():
                    if line and not line.startswith("#"):
                        name, _, value = line.rpartition(" ")
                        metrics[name] = value
                if metrics.get("probe_success") == "1":
                    tally.ok += 1
                    tally.outcomes["probe_success 1"] += 1
                else:
                    tally.outcomes["probe_success 0"] += 1
                    tally.failed.append(target)
                with contextlib.suppress(KeyError, ValueError):
                    tally.durations.append(float(metrics["probe_duration_seconds"]))

        async with asyncio.TaskGroup() as tg:
            for _ in range(concurrency):
                tg.create_task(worker())


def blackbox_target(lab: Lab, module: str, i: int) -> str:
    if module == "http_2xx":
        return f"https://{domain(i)}:{lab.https_port}/api/v2/instance"
    return f"{domain(i)}:{lab.https_port}"


async def _debug_probe(lab: Lab, module: str, target: str) -> str:
    url = f"http://{lab.blackbox_addr}/probe"
    params = {"target": target, "module": module, "debug": "true"}
    async with aiohttp.ClientSession() as session, session.get(url, params=params) as resp:
        return (await resp.text())[:3000]


def run_blackbox(
    lab: Lab, svcs: dict[str, Service], module: str, concurrency: int, args: argparse.Namespace
) -> Phase:
    steps = "DNS A, TCP, TLS" if module == "tls_connect" else "DNS A, TCP, TLS, HTTP GET"
    targets = [blackbox_target(lab, module, i) for i in range(lab.n_targets)]
    phase = Phase(
        "blackbox_exporter",
        module,
        concurrency,
        lab.n_targets,
        steps,
        command=f"GET http://{lab.blackbox_addr}/probe?target={targets[0]}&module={module}",
    )
    bb = svcs["blackbox"]
    servers = ServerCPU(svcs)
    bb_cpu0 = bb.cpu()
    driver0 = time.process_time()
    t0 = time.perf_counter()
    tally = DriverTally()
    try:
        asyncio.run(
            asyncio.wait_for(
                _drive_blackbox(lab, module, targets, concurrency, args.timeout, tally),
                args.phase_timeout,
            )
        )
    except TimeoutError:
        phase.aborted = True
    ok, outcomes, durations, failed = tally.ok, tally.outcomes, tally.durations, tally.failed
    phase.wall_s = round(time.perf_counter() - t0, 3)
    phase.driver_cpu_s = round(time.process_time() - driver0, 3)
    phase.tool_cpu_s = round(bb.cpu() - bb_cpu0, 3)
    phase.nginx_cpu_s, phase.dns_cpu_s = servers.delta("nginx"), servers.delta("dns")
    phase.peak_rss_mb = round(bb.hwm_kb() / 1024, 1)
    phase.ok = ok
    phase.results = sum(outcomes.values())
    phase.rate = round(phase.results / phase.wall_s, 1) if phase.wall_s else 0.0
    durations.sort()
    phase.detail.update(
        outcomes=dict(outcomes),
        rss_now_mb=round(bb.rss_kb() / 1024, 1),
        failed_targets=failed[:10],
    )
    if durations:
        phase.detail.update(
            probe_duration_p50_s=round(durations[len(durations) // 2], 4),
            probe_duration_p95_s=round(durations[int(len(durations) * 0.95)], 4),
            probe_duration_max_s=round(durations[-1], 4),
        )
    if failed:
        phase.detail["debug_first_failure"] = asyncio.run(_debug_probe(lab, module, failed[0]))
    return phase


def warm_up(lab: Lab, svcs: dict[str, Service]) -> None:
    """A few probes of each kind so that no timed phase pays for first-use costs."""
    n = min(20, lab.n_targets)
    for module in ("tls_connect", "http_2xx"):
        targets = [blackbox_target(lab, module, i) for i in range(n)]
        asyncio.run(_drive_blackbox(lab, module, targets, 8, 5, DriverTally()))
    for i in range(n):
        https_ready(lab, i)
    for svc in svcs.values():
        svc.check_alive()


# ------------------------------------------------------------------------ report


def versions() -> dict[str, str]:
    def first_line(cmd: list[str]) -> str:
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
        except OSError as exc:
            return f"unavailable: {exc}"
        return (p.stdout + p.stderr).strip().splitlines()[0] if (p.stdout + p.stderr) else "?"

    return {
        "probe": first_line([str(PROBE_BIN), "version"]),
        "nginx": first_line([NGINX, "-v"]),
        "unbound": first_line([UNBOUND, "-V"]),
        "blackbox_exporter": first_line([BLACKBOX, "--version"]),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def median_phases(phases: list[Phase]) -> list[tuple[Phase, list[Phase]]]:
    """Per (tool, what, C), in first-run order: the run with the median rate, and all runs."""
    groups: dict[tuple[str, str, int], list[Phase]] = {}
    for p in phases:
        groups.setdefault((p.tool, p.what, p.concurrency), []).append(p)
    out = []
    for runs in groups.values():
        ranked = sorted(runs, key=lambda p: p.rate)
        out.append((ranked[(len(ranked) - 1) // 2], runs))
    return out


def cpu_ms_per_target(p: Phase) -> float:
    return round(1000 * (p.tool_cpu_s + p.driver_cpu_s) / max(1, p.targets), 2)


def render(phases: list[Phase], summary: dict[str, Any], concurrency: int) -> None:
    rounds = max(p.round for p in phases)
    title = f"blockwatch-probe vs blackbox_exporter: {phases[0].targets} targets, "
    title += f"median of {rounds} rounds" if rounds > 1 else "1 round"
    table = Table(title=title, box=box.SIMPLE_HEAD)
    headers = {
        "tool": "tool",
        "what": "what",
        "C": "C",
        "rate": "targets/s",
        "each": "each round",
        "wall": "wall s",
        "ok": "no failure",
        "cpu": "tool CPU s",
        "driver": "driver CPU s",
        "per": "CPU ms/target",
        "nginx": "nginx CPU s",
        "dns": "DNS CPU s",
        "rss": "peak mem MB",
    }
    for key, col in headers.items():
        table.add_column(
            col,
            justify="left" if key in ("tool", "what") else "right",
            no_wrap=key in ("tool", "what", "each"),
        )
    for p, runs in median_phases(phases):
        all_ok = all(r.ok == r.targets == r.results and not r.aborted for r in runs)
        ok_style = "green" if all_ok else "bold red"
        table.add_row(
            p.tool + (" [red](aborted)[/]" if any(r.aborted for r in runs) else ""),
            p.what,
            str(p.concurrency),
            f"[bold]{p.rate:.1f}[/]",
            " ".join(f"{r.rate:.0f}" for r in runs),
            f"{p.wall_s:.2f}",
            f"[{ok_style}]{p.ok} / {p.results}[/]",
            f"{p.tool_cpu_s:.2f}",
            f"{p.driver_cpu_s:.2f}" if p.tool.startswith("blackbox") else "-",
            f"{cpu_ms_per_target(p):.2f}",
            f"{p.nginx_cpu_s:.2f}",
            f"{p.dns_cpu_s:.2f}",
            f"{p.peak_rss_mb:.1f}",
        )
    console.print(table)
    for p, _ in median_phases(phases):
        if p.tool == "blockwatch-probe" and p.concurrency == concurrency:
            console.print(f"[dim]{p.tool} {p.what}: {p.steps}[/]")
    for p, _ in median_phases(phases):
        if p.tool != "blockwatch-probe" and p.concurrency == concurrency:
            console.print(f"[dim]{p.tool} {p.what}: {p.steps}[/]")
    for p, _ in median_phases(phases):
        if p.tool == "blockwatch-probe":
            d = p.detail
            console.print(
                f"[dim]probe C={p.concurrency}: engine window {d.get('engine_window_s')} s "
                f"({d.get('engine_rate')}/s), start-up {d.get('startup_s')} s, user/sys "
                f"{d.get('user_s')}/{d.get('sys_s')} s, per-measurement runtime p50/p95/max "
                f"{d.get('runtime_p50_s')}/{d.get('runtime_p95_s')}/{d.get('runtime_max_s')} s[/]"
            )
    for p in phases:
        if p.ok != p.results or p.results != p.targets or p.aborted:
            why = p.detail.get("problems") or p.detail.get("outcomes")
            if p.detail.get("missing_count"):
                why = f"{p.detail['missing_count']} domains missing; {why}"
            console.print(
                f"[bold red]round {p.round} {p.tool} {p.what} C={p.concurrency}:[/] "
                f"{p.results} results, {p.ok} ok: {why}"
            )

    goals = Table(title=f"goals (C={concurrency})")
    for col in ("figure", "value", "goal", "met"):
        goals.add_column(col)
    for g in summary["goals"]:
        met = "[green]yes[/]" if g["met"] else "[bold red]no[/]"
        goals.add_row(g["figure"], g["value"], g["goal"], met)
    console.print(goals)


def summarize(phases: list[Phase], concurrency: int) -> dict[str, Any]:
    medians = {
        (p.tool, p.what): p for p, _ in median_phases(phases) if p.concurrency == concurrency
    }
    probe = medians.get(("blockwatch-probe", "measure"))
    bb = medians.get(("blackbox_exporter", "tls_connect"))
    goals: list[dict[str, Any]] = []
    valid = all(p.ok == p.targets == p.results and not p.aborted for p in phases)
    out: dict[str, Any] = {"concurrency": concurrency, "valid": valid, "goals": goals}
    if probe:
        all_ok = probe.ok == probe.targets
        peak = max(
            p.peak_rss_mb for p in phases if p.tool == probe.tool and p.concurrency == concurrency
        )
        out.update(
            probe_rate=probe.rate,
            probe_engine_rate=probe.detail.get("engine_rate"),
            probe_peak_rss_mb=peak,
            probe_cpu_ms_per_measurement=cpu_ms_per_target(probe),
        )
        goals += [
            {
                "figure": "probe measurements/s (wall time, start-up included)",
                "value": f"{probe.rate:.1f}",
                "goal": ">= 300",
                "met": probe.rate >= 300 and all_ok,
            },
            {
                "figure": "probe peak memory: PSS of its process tree, or its largest "
                "process's RSS if higher (highest of the rounds)",
                "value": f"{peak:.1f} MB",
                "goal": "< 100 MB",
                "met": peak < 100,
            },
            {
                "figure": "probe measurements with no failure",
                "value": f"{probe.ok} / {probe.targets}",
                "goal": "all",
                "met": all_ok,
            },
        ]
    if bb:
        out.update(blackbox_rate=bb.rate, blackbox_cpu_ms_per_probe=cpu_ms_per_target(bb))
        goals.append(
            {
                "figure": "blackbox tls_connect probe_success 1",
                "value": f"{bb.ok} / {bb.targets}",
                "goal": "all",
                "met": bb.ok == bb.targets,
            }
        )
    if probe and bb and bb.rate:
        ratio = probe.rate / bb.rate
        out["ratio"] = round(ratio, 3)
        engine_rate = probe.detail.get("engine_rate")
        if engine_rate:
            out["ratio_engine_window"] = round(engine_rate / bb.rate, 3)
        out["cpu_ratio"] = round(cpu_ms_per_target(bb) / max(cpu_ms_per_target(probe), 1e-9), 3)
        goals.append(
            {
                "figure": "probe / blackbox tls_connect, targets/s",
                "value": f"{ratio:.2f}",
                "goal": ">= 1.0",
                "met": ratio >= 1.0 and probe.ok == probe.targets,
            }
        )
    floor2 = medians.get(("probe TLS only", "2 handshakes"))
    floor1 = medians.get(("probe TLS only", "1 handshake"))
    if bb and bb.rate and floor2 and floor1:
        # What the ratio goal would need: even the probe's TLS steps alone, with
        # nothing else, against blackbox's whole tls_connect.
        out.update(
            tls_only_2_rate=floor2.rate,
            tls_only_1_rate=floor1.rate,
            ceiling_ratio=round(floor2.rate / bb.rate, 3),
            same_work_ratio=round(floor1.rate / bb.rate, 3),
        )
        if probe:
            out["probe_share_of_ceiling"] = round(probe.rate / floor2.rate, 3)
    return out


def render_ceiling(summary: dict[str, Any]) -> None:
    if "ceiling_ratio" not in summary:
        return
    console.print(
        f"[bold]ceiling[/]: the probe's TLS code alone, 2 handshakes a target "
        f"({summary['tls_only_2_rate']:.1f}/s), is {summary['ceiling_ratio']:.2f} x blackbox "
        f"tls_connect; with blackbox's own work minus DNS, 1 handshake "
        f"({summary['tls_only_1_rate']:.1f}/s), {summary['same_work_ratio']:.2f} x. "
        f"The full probe reaches {summary.get('probe_share_of_ceiling', 0):.2f} of that "
        "ceiling."
    )


# -------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--concurrency", type=int, default=256, help="main concurrency (256)")
    ap.add_argument(
        "--reference-concurrency",
        type=int,
        nargs="*",
        default=[64],
        help="further concurrencies to run both tools at (64; none to skip)",
    )
    ap.add_argument("--targets", type=int, default=1000, help="number of targets (max 1000)")
    ap.add_argument("--timeout", type=float, default=5.0, help="per-step timeout of both tools")
    ap.add_argument("--phase-timeout", type=float, default=120.0, help="abort a phase after")
    ap.add_argument("--https-port", type=int, default=18443)
    ap.add_argument("--dns-ip", default="127.53.0.1", help="loopback address of the DNS server")
    ap.add_argument("--blackbox-addr", default="127.0.0.1:19115")
    ap.add_argument("--nginx-workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--no-http-2xx", action="store_true", help="skip blackbox's http_2xx phase")
    ap.add_argument(
        "--no-floor", action="store_true", help="skip the probe's TLS-only phases (tls_floor.py)"
    )
    ap.add_argument("--rounds", type=int, default=3, help="rounds of every phase (median)")
    ap.add_argument("--max-total", type=float, default=900.0, help="no new phase after (s)")
    ap.add_argument("--strict", action="store_true", help="exit 2 when a goal is not met")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument(
        "--serve",
        type=float,
        metavar="SECONDS",
        help="only start the lab and keep it up this long (to profile or run by hand)",
    )
    ap.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = ap.parse_args(argv)
    if not 1 <= args.targets <= 1000:
        ap.error("--targets must be 1..1000")
    if ipaddress.ip_address(args.dns_ip) not in LOOPBACK:
        ap.error("--dns-ip must be a loopback address")
    if ipaddress.ip_address(args.blackbox_addr.rsplit(":", 1)[0]) not in LOOPBACK:
        ap.error("--blackbox-addr must be on loopback")
    return args


def plan(args: argparse.Namespace) -> Iterator[tuple[str, str, int]]:
    for c in dict.fromkeys([args.concurrency, *args.reference_concurrency]):
        yield "probe", "measure", c
        yield "blackbox", "tls_connect", c
        if c == args.concurrency and not args.no_http_2xx:
            yield "blackbox", "http_2xx", c
        if c == args.concurrency and not args.no_floor:
            yield "floor", "2", c
            yield "floor", "1", c


def serve(lab: Lab, svcs: dict[str, Service], seconds: float) -> int:
    """Keep the lab up for a while (profiling, manual runs), then stop it."""
    probe = run_probe_command(lab, 256, 5.0)
    console.print(f"[bold]lab up for {seconds:g} s[/] (Ctrl-C stops it). Try:")
    print("  " + shlex.join(probe), flush=True)
    bb = f"curl 'http://{lab.blackbox_addr}/probe?module=tls_connect&target={domain(0)}:"
    print(f"  {bb}{lab.https_port}'", flush=True)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for svc in svcs.values():
            svc.check_alive()
        time.sleep(0.5)
    return 0


def _sigterm(_signo: int, _frame: object) -> None:
    raise KeyboardInterrupt  # same clean-up path as Ctrl-C


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Explicit handlers: a shell that starts us in the background ignores SIGINT,
    # and Python would then never raise KeyboardInterrupt.
    for signo in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signo, _sigterm)
    if os.geteuid() != 0:
        sys.exit(
            "run as root: the DNS server listens on port 53 (resolv.conf has no port) "
            "and blackbox_exporter needs a private mount namespace"
        )
    ensure_debian_packages()
    if not PROBE_BIN.exists():
        sys.exit(f"{PROBE_BIN} not found: install the project into .venv first")
    bench_cmd = shlex.join([sys.executable, *sys.argv])
    console.print("[bold]bench command:[/]")
    print("  " + bench_cmd, flush=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    tmp = Path(tempfile.mkdtemp(prefix="bw-bench-"))
    services = Services()
    phases: list[Phase] = []
    try:
        ca, cert, key = make_pki(tmp)
        lab = Lab(
            root=tmp,
            n_targets=args.targets,
            https_port=args.https_port,
            dns_ip=args.dns_ip,
            dns_port=53,
            blackbox_addr=args.blackbox_addr,
            ca=ca,
            cert=cert,
            key=key,
        )
        lab.domains_file.write_text("".join(domain(i) + "\n" for i in range(lab.n_targets)))
        svcs = start_lab(lab, services, args)
        console.print(
            f"lab up in {tmp}: {lab.n_targets} targets on 127.1.0.1-{target_ip(lab.n_targets - 1)}"
            f":{lab.https_port} (nginx pids {svcs['nginx'].pids}), DNS {lab.resolver} "
            f"(unbound), blackbox_exporter {lab.blackbox_addr}"
        )
        if args.serve is not None:
            return serve(lab, svcs, args.serve)
        warm_up(lab, svcs)
        deadline = time.monotonic() + args.max_total
        printed: set[str] = set()
        for rnd in range(1, args.rounds + 1):
            for tool, what, c in plan(args):
                if time.monotonic() > deadline:
                    console.print(f"[bold red]--max-total {args.max_total:g} s reached[/]")
                    break
                console.print(f"[bold]round {rnd}[/] {tool} {what} C={c} ...", end=" ")
                if tool == "probe":
                    phase = run_probe(lab, svcs, c, args)
                elif tool == "floor":
                    phase = run_floor(lab, svcs, c, int(what), args)
                else:
                    phase = run_blackbox(lab, svcs, what, c, args)
                phase.round = rnd
                phases.append(phase)
                console.print(
                    f"{phase.rate:.1f}/s, {phase.ok}/{phase.results} ok, {phase.wall_s:.2f} s"
                    + (" [bold red]ABORTED[/]" if phase.aborted else "")
                )
                if tool == "probe" and phase.command not in printed:
                    printed.add(phase.command)
                    console.print("  probe command:", style="dim")
                    print("  " + phase.command, flush=True)
                for svc in svcs.values():
                    svc.check_alive()
        summary = summarize(phases, args.concurrency)
        render(phases, summary, args.concurrency)
        render_ceiling(summary)
        report = {
            "timestamp": stamp,
            "bench_command": bench_cmd,
            "probe_commands": [p.command for p in phases if p.tool == "blockwatch-probe"],
            "machine": {"cpus": os.cpu_count(), "versions": versions()},
            "setup": {
                "targets": lab.n_targets,
                "addresses": f"127.1.0.1-{target_ip(lab.n_targets - 1)}",
                "https_port": lab.https_port,
                "dns": f"unbound {lab.resolver}",
                "blackbox": lab.blackbox_addr,
                "nginx_workers": args.nginx_workers,
                "timeout_s": args.timeout,
                "rounds": args.rounds,
                "certificate": "ECDSA P-256, SAN *.bench.test, test CA",
            },
            "summary": summary,
            "phases": [asdict(p) for p in phases],
        }
        args.results_dir.mkdir(parents=True, exist_ok=True)
        path = args.results_dir / f"measure-{stamp}.json"
        path.write_text(json.dumps(report, indent=2) + "\n")
        console.print(f"results: {path}")
        if not summary["valid"]:
            console.print("[bold red]INVALID RUN[/]: some results are missing or failed (above)")
            return 1
        if args.strict and not all(g["met"] for g in summary["goals"]):
            return 2
        return 0
    except KeyboardInterrupt:
        console.print("[bold red]interrupted[/]: stopping the lab")
        return 130
    except RuntimeError as exc:  # a server would not start, or died mid-run
        console.print(f"[bold red]error:[/] {exc}")
        return 1
    finally:
        services.close()
        if args.keep:
            console.print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
