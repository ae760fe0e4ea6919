"""``python -m tests.lab``: the lab for exploring by hand (``make lab``).

    python -m tests.lab up                       start, print how to use it, wait for Ctrl-C
    python -m tests.lab scenario NAME            apply a catalogue scenario to the running lab
    python -m tests.lab censor national sni_rst=alive.test,pawoo.test delay_ms=50
    python -m tests.lab censor regional reset
    python -m tests.lab server g0v.test closed   (mastodon | http_500 | closed | ...)
    python -m tests.lab dns down|up              the authoritative server
    python -m tests.lab measure a1 alive.test [probe options...]
    python -m tests.lab status | list | cleanup

Without root, ``up`` re-executes itself in an unprivileged user namespace
(``unshare --user --map-root-user --net --mount``) when the kernel allows it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from tests.lab import topology as topo
from tests.lab.censor import Policy
from tests.lab.control import Control
from tests.lab.lab import RUN_GLOB, RUN_ROOT, Lab, cleanup_stale
from tests.lab.preflight import LabUnavailable
from tests.lab.scenarios import CATALOGUE, baseline_policies

USAGE = __doc__ or ""


def _running() -> Path:
    runs = sorted(RUN_ROOT.glob(RUN_GLOB), key=lambda p: p.stat().st_mtime)
    if not runs:
        sys.exit("no lab is running: start one with `make lab`")
    return runs[-1]


def _print_help(lab: Lab) -> None:
    print(f"\nBlockwatch censorship lab {lab.prefix} is up (run dir {lab.run_dir}).\n")
    print("Namespaces (enter one with `ip netns exec NAME bash`):")
    for net in topo.NETWORKS:
        probes = ", ".join(lab.ns(r) for r in lab.topo.probe_roles(net.name))
        print(
            f"  {net.name} ({net.cc} AS{net.asn}): probes {probes}; ISP resolver "
            f"{net.resolver} in {lab.ns(net.key + 'dns')}"
        )
    print(f"  censors: national {lab.ns('nat')}, regional (cn-b only) {lab.ns('reg')}")
    print(
        f"  internet: {lab.ns('dns')} (resolver {topo.RECURSIVE_RESOLVER}), "
        f"{lab.ns('web')} (instances), {lab.ns('ctl')} (control), {lab.ns('col')} (collector)"
    )
    print("\nInstances:", ", ".join(f"{i.domain}={lab.ip_of(i.domain)}" for i in lab.instances))
    print("\nTry:")
    print(
        f"  ip netns exec {lab.ns('a1')} {' '.join(lab.probe_command('--format', 'table'))} "
        "alive.test"
    )
    print("  python -m tests.lab scenario pawoo_dns_and_sni")
    print("  python -m tests.lab censor national sni_rst=alive.test residual_seconds=30")
    print("  python -m tests.lab measure a1 alive.test --format table")
    print("  python -m tests.lab censor national reset")
    print("\nScenarios:", ", ".join(s.name for s in CATALOGUE))
    print("\nCtrl-C tears everything down.", flush=True)


def up() -> None:
    wants_userns = os.geteuid() != 0 or os.environ.get("BLOCKWATCH_LAB_FORCE_USERNS")
    if wants_userns and not os.environ.get("BLOCKWATCH_LAB_USERNS"):
        unshare = shutil.which("unshare")
        if unshare is None:
            sys.exit("not root and no `unshare` to make a user namespace")
        os.environ["BLOCKWATCH_LAB_USERNS"] = "1"
        os.execv(
            unshare,
            [
                unshare,
                "--user",
                "--map-root-user",
                "--net",
                "--mount",
                "--propagation",
                "private",
                sys.executable,
                "-m",
                "tests.lab",
                "up",
            ],
        )
    if os.environ.get("BLOCKWATCH_LAB_USERNS"):
        _private_mounts()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    started = time.monotonic()
    try:
        with Lab() as lab:
            print(f"(up in {time.monotonic() - started:.1f} s)")
            _print_help(lab)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        print("\ntorn down.")
    except LabUnavailable as exc:
        sys.exit(str(exc))


def _private_mounts() -> None:
    """Inside a user namespace: our own /run/netns and /etc/netns (tmpfs)."""
    for path in ("/run/netns", "/etc/netns"):
        Path(path).mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", path], check=True)


def _parse_assignments(items: list[str]) -> dict[str, Any]:
    types = {f.name: f.type for f in fields(Policy)}
    changes: dict[str, Any] = {}
    for item in items:
        key, _, value = item.partition("=")
        if key not in types:
            sys.exit(f"unknown policy field {key!r}; fields: {', '.join(types)}")
        kind = str(types[key])
        if kind.startswith("list"):
            changes[key] = [v for v in value.split(",") if v]
        elif kind.startswith("dict"):
            changes[key] = json.loads(value)
        else:
            changes[key] = float(value)
    return changes


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    if command == "up":
        up()
        return
    if command == "cleanup":
        print("removed:", ", ".join(cleanup_stale()) or "nothing")
        return
    if command == "list":
        for run in RUN_ROOT.glob(RUN_GLOB):
            print(run)
        return
    run = _running()
    manifest = json.loads((run / "manifest.json").read_text())
    prefix = manifest["prefix"]
    if command == "censor":
        control = Control(run / f"{rest[0]}.sock")
        base = baseline_policies()[0 if rest[0] == "national" else 1]
        if rest[1:] == ["reset"]:
            control.set_policy(base)
        else:
            current = control.policy()
            current.update(_parse_assignments(rest[1:]))
            control.set_policy(current)
        print(json.dumps(control.policy(), indent=1))
    elif command == "scenario":
        scenario = next((s for s in CATALOGUE if s.name == rest[0]), None)
        if scenario is None:
            sys.exit(f"no scenario {rest[0]!r}")
        lab = _attached(run, prefix)
        lab.reset()
        scenario.setup(lab)
        print(f"{scenario.name}: {scenario.description}")
    elif command == "server":
        Control(run / "web.sock").request(op="instance", domain=rest[0], behaviour=rest[1])
    elif command == "dns":
        Control(run / "dns.sock").request(op="authoritative", up=rest[0] == "up")
    elif command == "measure":
        lab = _attached(run, prefix)
        result = lab.exec(rest[0], lab.probe_command(*rest[1:]), timeout=300)
        sys.stdout.write(result.stdout)
        sys.stderr.write(result.stderr)
    elif command == "status":
        for name in ("national", "regional"):
            print(name, json.dumps(Control(run / f"{name}.sock").stats()))
        print(json.dumps(asdict(baseline_policies()[0]), indent=1))
    else:
        sys.exit(USAGE)


def _attached(run: Path, prefix: str) -> Lab:
    """A Lab object bound to an already running lab (it will not tear it down)."""
    lab = Lab()
    lab.prefix = prefix
    lab.topo = topo.build(prefix, len(lab.instances))
    lab.run_dir = run
    for attr, sock in (
        ("national", "national"),
        ("regional", "regional"),
        ("web", "web"),
        ("dns", "dns"),
    ):
        setattr(lab, attr, Control(run / f"{sock}.sock"))
    lab.isp = {n.name: Control(run / f"{n.key}dns.sock") for n in topo.NETWORKS}
    return lab


if __name__ == "__main__":
    main(sys.argv[1:])
