"""Bring the lab up and down, and drive it: ``with Lab() as lab: lab.probe("a1", [...])``.

Bring-up: check the privileges and tools, make the PKI, create every namespace
and veth pair with two ``ip -batch`` runs per namespace set, load the censors'
iptables rules, write each host's ``/etc/netns/<ns>/resolv.conf``, and start the
daemons (two censors, the DNS hosts, the web host) inside their namespaces.

Teardown removes everything the run made (daemons, namespaces with their links,
bridges and rules, /etc/netns entries, the run directory) on exit, on Ctrl-C,
on SIGTERM and when a test fails; a manifest in the run directory lets
``python -m tests.lab cleanup`` remove a run whose owner was killed outright.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.lab import topology as topo_mod
from tests.lab import webfront
from tests.lab.control import Control
from tests.lab.labpki import save_pki
from tests.lab.preflight import require_lab_support
from tests.support.pki import TestPKI

REPO = Path(__file__).resolve().parents[2]
RUN_ROOT = Path(tempfile.gettempdir())
RUN_GLOB = "blockwatch-lab-*"
NETNS_ETC = Path("/etc/netns")
READY_TIMEOUT = 20.0
MITM_PORT = 8443


@dataclass(frozen=True)
class LabInstance:
    domain: str
    names: tuple[str, ...] = ()

    def all_names(self) -> list[str]:
        return [self.domain, *self.names]


DEFAULT_INSTANCES = (
    LabInstance("alive.test", ("www.alive.test",)),
    LabInstance("alive-mirror.test"),
    LabInstance("pawoo.test"),
    # shared.test lives on cmx.test's address (shared hosting): after an SNI
    # trigger for cmx.test, residual blocking hits it too.
    LabInstance("cmx.test", ("m.cmx.test", "shared.test")),
    LabInstance("o3o.test"),
    LabInstance("g0v.test"),
    LabInstance("mstdn.test"),
    LabInstance("wxw.test"),
)
PLAIN_HTTP_DOMAIN = "plain.test"


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the lab's process dies (PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)


class Lab:
    def __init__(self, instances: tuple[LabInstance, ...] = DEFAULT_INSTANCES) -> None:
        self.instances = instances
        self.prefix = "bw" + secrets.token_hex(2)
        self.topo = topo_mod.build(self.prefix, len(instances))
        self.run_dir = RUN_ROOT / f"blockwatch-lab-{self.prefix}"
        self.processes: list[subprocess.Popen[bytes]] = []
        self.pki: TestPKI | None = None
        self.national = Control(self.run_dir / "national.sock")
        self.regional = Control(self.run_dir / "regional.sock")
        self.web = Control(self.run_dir / "web.sock")
        self.dns = Control(self.run_dir / "dns.sock")
        self.ctl = Control(self.run_dir / "ctl.sock")  # the SOCKS5 proxy abroad
        self.isp = {n.name: Control(self.run_dir / f"{n.key}dns.sock") for n in topo_mod.NETWORKS}
        self._started = False

    # -- addresses and names ---------------------------------------------------

    def ip_of(self, domain: str) -> str:
        if domain == PLAIN_HTTP_DOMAIN:
            return topo_mod.PLAIN_HTTP_SITE
        for index, inst in enumerate(self.instances):
            if domain in inst.all_names():
                return topo_mod.instance_ip(index)
        raise KeyError(domain)

    @property
    def ca_file(self) -> Path:
        return self.run_dir / "pki" / "ca-trusted.pem"

    def ns(self, role: str) -> str:
        return self.topo.ns(role)

    # -- lifecycle ---------------------------------------------------------------

    def __enter__(self) -> Lab:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        require_lab_support()
        self._started = True
        self.run_dir.mkdir(mode=0o700)
        self._write_manifest()
        self.pki = self._make_pki()
        self._run(["ip", "-batch", "-"], "\n".join(topo_mod.root_commands(self.topo)))
        for ns, lines in topo_mod.namespace_commands(self.topo).items():
            self._run(["ip", "-n", ns, "-batch", "-"], "\n".join(lines))
        for router, queue in ((self.ns("nat"), 0), (self.ns("reg"), 1)):
            self._run(["ip", "netns", "exec", router, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
            self._run(
                ["ip", "netns", "exec", router, "iptables-restore"],
                topo_mod.censor_rules(self.topo, router, queue),
            )
        for host in self.topo.hosts:
            if host.resolver:
                etc = NETNS_ETC / self.ns(host.role)
                etc.mkdir(parents=True, exist_ok=True)
                (etc / "resolv.conf").write_text(f"nameserver {host.resolver}\n")
        self._start_daemons()
        self.reset()

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        for proc in self.processes:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 3
        for proc in self.processes:
            try:
                proc.wait(timeout=max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        self.processes.clear()
        remove_run(self.prefix, self.topo.namespaces)

    def _make_pki(self) -> TestPKI:
        pki = TestPKI.create(self.run_dir / "pki")
        for inst in self.instances:
            pki.cert_files(inst.all_names())
            # What the interception proxy presents: the right name, the wrong CA.
            for name in inst.all_names():
                cert, key = pki.cert_files([name], issuer="untrusted")
                shutil.copy(cert, self.run_dir / "pki" / f"mitm-{name}.pem")
                shutil.copy(key, self.run_dir / "pki" / f"mitm-{name}.key")
        save_pki(pki)
        return pki

    def _write_manifest(self) -> None:
        manifest = {"prefix": self.prefix, "namespaces": self.topo.namespaces, "pid": os.getpid()}
        (self.run_dir / "manifest.json").write_text(json.dumps(manifest))

    def _run(self, argv: list[str], stdin: str | None = None) -> None:
        subprocess.run(
            argv,
            input=stdin.encode() if stdin is not None else None,
            check=True,
            capture_output=True,
        )

    # -- daemons -------------------------------------------------------------------

    def _host_configs(self) -> dict[str, dict[str, Any]]:
        pki_dir = str(self.run_dir / "pki")
        records = {
            name: [topo_mod.instance_ip(i)]
            for i, inst in enumerate(self.instances)
            for name in inst.all_names()
        }
        records[PLAIN_HTTP_DOMAIN] = [topo_mod.PLAIN_HTTP_SITE]
        records[topo_mod.COLLECTOR_NAME] = [topo_mod.COLLECTOR]
        instances = [
            {
                "domain": inst.domain,
                "names": inst.all_names(),
                "ip": topo_mod.instance_ip(i),
                "port": 443,
                "behaviour": "mastodon",
            }
            for i, inst in enumerate(self.instances)
        ]
        instances.append(
            {
                "domain": PLAIN_HTTP_DOMAIN,
                "names": [PLAIN_HTTP_DOMAIN],
                "ip": topo_mod.PLAIN_HTTP_SITE,
                "port": 80,
                "behaviour": "plain_http",
            }
        )
        configs: dict[str, dict[str, Any]] = {
            "dns": {
                "authoritative": {"ip": topo_mod.AUTHORITATIVE, "records": records},
                "resolvers": [
                    {"ip": topo_mod.RECURSIVE_RESOLVER, "upstream": topo_mod.AUTHORITATIVE}
                ],
                "doh": {"ip": topo_mod.DOH_RESOLVER, "upstream": topo_mod.RECURSIVE_RESOLVER},
            },
            "web": {"instances": instances},
            "ctl": {"socks": {"ip": topo_mod.CONTROL_VANTAGE, "port": topo_mod.SOCKS_PORT}},
        }
        for net in topo_mod.NETWORKS:
            configs[f"{net.key}dns"] = {
                "resolvers": [{"ip": net.resolver, "upstream": topo_mod.RECURSIVE_RESOLVER}]
            }
        for role, config in configs.items():
            config["pki_dir"] = pki_dir
            config["control"] = str(self.run_dir / f"{role}.sock")
        return configs

    def _spawn(self, ns: str, module: str, *args: str) -> subprocess.Popen[bytes]:
        with open(self.run_dir / f"{ns}.log", "ab") as log:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, "-m", module, *args],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=log,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 (only prctl, no locks)
            )
        self.processes.append(proc)
        return proc

    def _start_daemons(self) -> None:
        waiting: list[tuple[str, subprocess.Popen[bytes]]] = []
        for role, config in self._host_configs().items():
            path = self.run_dir / f"{role}.json"
            path.write_text(json.dumps(config))
            waiting.append((role, self._spawn(self.ns(role), "tests.lab.hostd", str(path))))
        for router, name, queue in (("nat", "national", 0), ("reg", "regional", 1)):
            waiting.append(
                (
                    name,
                    self._spawn(
                        self.ns(router),
                        "tests.lab.censor",
                        str(self.run_dir / f"{name}.sock"),
                        str(queue),
                        str(MITM_PORT),
                        str(self.run_dir / "pki"),
                    ),
                )
            )
        self._start_webfront()
        deadline = time.monotonic() + READY_TIMEOUT
        for name, proc in waiting:
            assert proc.stdout is not None
            os.set_blocking(proc.stdout.fileno(), True)
            line = _readline_until(proc, deadline)
            if line.strip() != b"ready":
                log = (self.run_dir / f"{proc.args[3]}.log").read_text(errors="replace")  # type: ignore[index]
                raise RuntimeError(f"lab daemon {name} did not start:\n{log[-3000:]}")

    def _start_webfront(self) -> None:
        """nginx in ``col``: the collector over HTTPS with its name (tests/lab/webfront.py)."""
        assert self.pki is not None
        cert, key = self.pki.cert_files([topo_mod.COLLECTOR_NAME])
        conf = webfront.write(self.run_dir, cert, key)
        ns = ["ip", "netns", "exec", self.ns("col")]
        check = subprocess.run(
            [*ns, "nginx", "-t", "-c", str(conf)], capture_output=True, text=True, check=False
        )
        if check.returncode != 0:
            raise RuntimeError(f"the lab's nginx configuration is refused:\n{check.stderr}")
        with open(self.run_dir / "nginx.log", "ab") as log:
            proc = subprocess.Popen(
                [*ns, "nginx", "-c", str(conf)],
                stdout=log,
                stderr=log,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 (only prctl, no locks)
            )
        self.processes.append(proc)
        probe = f"import socket; socket.create_connection(({topo_mod.COLLECTOR!r}, 443), 1).close()"
        deadline = time.monotonic() + READY_TIMEOUT
        while self.exec("col", [sys.executable, "-c", probe]).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                log = (self.run_dir / "nginx" / "error.log").read_text(errors="replace")
                raise RuntimeError(f"the lab's nginx did not start:\n{log[-3000:]}")
            time.sleep(0.05)

    # -- driving it ----------------------------------------------------------------

    def reset(self) -> None:
        """Every censor back to its baseline (delay only), every server healthy."""
        from tests.lab.scenarios import baseline_policies

        national, regional = baseline_policies()
        self.national.set_policy(national)
        self.regional.set_policy(regional)
        for inst in self.instances:
            self.web.request(op="instance", domain=inst.domain, behaviour="mastodon")
        self.dns.request(op="authoritative", up=True)
        for net in topo_mod.NETWORKS:
            self.isp[net.name].request(op="bogons", resolver=net.resolver, answers={})

    def exec(
        self, role: str, argv: list[str], timeout: float = 60, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run *argv* inside a host's namespace."""
        return subprocess.run(
            ["ip", "netns", "exec", self.ns(role), *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
            check=False,
        )

    def probe_command(self, *args: str, timeout: float = 3.0) -> list[str]:
        probe = str(Path(sys.executable).parent / "blockwatch-probe")
        return [
            probe,
            "measure",
            "--ca-file",
            str(self.ca_file),
            "--lab-network",
            topo_mod.INTERNET_CIDR,
            "--timeout",
            str(timeout),
            *args,
        ]

    def measure(
        self, role: str, domains: list[str], *args: str, timeout: float = 3.0
    ) -> dict[str, dict[str, Any]]:
        """``blockwatch-probe measure`` in a probe's namespace; the JSON lines by domain."""
        result = self.exec(role, self.probe_command(*args, *domains, timeout=timeout), timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"probe exited {result.returncode}: {result.stderr[-2000:]}")
        lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
        return {m["domain"]: m for m in lines}


def _readline_until(proc: subprocess.Popen[bytes], deadline: float) -> bytes:
    import selectors

    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
            return b""
    return proc.stdout.readline()


def remove_run(prefix: str, namespaces: list[str]) -> None:
    """Delete a run's namespaces (their links, bridges and rules go with them) and files."""
    for ns in namespaces:
        # Processes left in the namespace (a killed owner's daemons) go first.
        pids = subprocess.run(
            ["ip", "netns", "pids", ns], capture_output=True, text=True, check=False
        ).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        shutil.rmtree(NETNS_ETC / ns, ignore_errors=True)
    shutil.rmtree(RUN_ROOT / f"blockwatch-lab-{prefix}", ignore_errors=True)


def cleanup_stale() -> list[str]:
    """Remove every run whose owning process is gone; return their prefixes."""
    removed = []
    for run in RUN_ROOT.glob(RUN_GLOB):
        try:
            manifest = json.loads((run / "manifest.json").read_text())
        except (OSError, ValueError):
            continue
        try:
            os.kill(manifest["pid"], 0)
            continue  # its owner is alive: not ours to remove
        except ProcessLookupError:
            pass
        remove_run(manifest["prefix"], manifest["namespaces"])
        removed.append(manifest["prefix"])
    return removed
