"""The lab itself: bring-up and teardown leave nothing, the lab is sealed, fast enough."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.lab import topology as topo
from tests.lab.lab import NETNS_ETC, REPO, RUN_ROOT, Lab, cleanup_stale
from tests.lab.scenarios import CATALOGUE, HEALTHY

pytestmark = pytest.mark.lab


def leftovers(prefix: str) -> list[str]:
    """Everything a run with *prefix* could leave behind on the host."""
    found = []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    found += [line.split()[0] for line in netns.splitlines() if line.startswith(prefix)]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    found += [line for line in links.splitlines() if prefix in line]
    found += [str(p) for p in NETNS_ETC.glob(f"{prefix}-*")] if NETNS_ETC.exists() else []
    found += [str(p) for p in RUN_ROOT.glob(f"blockwatch-lab-{prefix}")]
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    found += [line for line in ps.splitlines() if f"blockwatch-lab-{prefix}" in line]
    return found


def test_context_manager_leaves_nothing(lab: Lab) -> None:
    # (the module's lab is up meanwhile; a second one proves two runs never collide)
    started = time.monotonic()
    with Lab() as other:
        up = time.monotonic() - started
        assert other.prefix != lab.prefix
        assert leftovers(other.prefix)  # it did make things...
        assert other.measure("a1", ["o3o.test"])["o3o.test"]["http"][0]["mastodon"]
    total = time.monotonic() - started
    assert leftovers(other.prefix) == []  # ...and removed them all
    print(f"bring-up {up:.2f} s, bring-up + probe + teardown {total:.2f} s")


def test_exception_inside_tears_down() -> None:
    lab = Lab()
    with pytest.raises(RuntimeError, match="a failing test"), lab:
        raise RuntimeError("a failing test")
    assert leftovers(lab.prefix) == []


def _start_cli(env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.lab", "up"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert proc.stdout is not None
    prefix = ""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "censorship lab" in line:
            prefix = line.split("lab ")[1].split()[0]
        if "Ctrl-C" in line:
            return proc, prefix
    proc.kill()
    raise AssertionError("the lab CLI did not come up")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_cli_signal_tears_down(sig: signal.Signals) -> None:
    proc, prefix = _start_cli()
    assert leftovers(prefix)
    proc.send_signal(sig)
    assert proc.wait(timeout=20) == 0
    assert proc.stdout is not None
    proc.stdout.close()
    assert leftovers(prefix) == []


def test_kill_9_then_cleanup_removes_the_orphans() -> None:
    proc, prefix = _start_cli()
    proc.kill()
    proc.wait()
    assert proc.stdout is not None
    proc.stdout.close()
    time.sleep(0.5)  # its daemons die with it (PR_SET_PDEATHSIG), its namespaces stay
    assert leftovers(prefix)
    assert prefix in cleanup_stale()
    assert leftovers(prefix) == []


def test_user_namespace_mode() -> None:
    """The unprivileged path (unshare --user --map-root-user), forced even as root."""
    proc, prefix = _start_cli({"BLOCKWATCH_LAB_FORCE_USERNS": "1"})
    # Its namespaces live in the user namespace's own /run/netns: invisible here.
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert prefix not in netns
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 0
    assert proc.stdout is not None
    proc.stdout.close()
    assert leftovers(prefix) == []


def test_no_route_out_of_the_lab(fresh_lab: Lab) -> None:
    # Every namespace: no interface but its own loopback and lab veths/bridges.
    for ns in fresh_lab.topo.namespaces:
        links = subprocess.run(
            ["ip", "-n", ns, "-o", "link"], capture_output=True, text=True, check=True
        ).stdout
        for line in links.splitlines():
            name = line.split(":")[1].strip().split("@")[0]
            assert name == "lo" or name.startswith(fresh_lab.prefix), (ns, name)
    # The censor, the lab's edge, has no route to an address outside the lab...
    route = subprocess.run(
        ["ip", "-n", fresh_lab.ns("nat"), "route", "get", "192.0.2.1"],
        capture_output=True,
        text=True,
    )
    assert route.returncode != 0
    assert "unreachable" in route.stderr
    # ...so a probe's packet to one dies inside the lab.
    code = (
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        "s.settimeout(1); s.sendto(b'x', ('192.0.2.1', 53));\n"
        "try:\n    s.recv(10); print('answered')\n"
        "except OSError as exc:\n    print(type(exc).__name__)"
    )
    result = fresh_lab.exec("a1", [sys.executable, "-c", code])
    # The censor answers "network unreachable" (ICMP), or the datagram just vanishes.
    assert result.stdout.strip() in {"TimeoutError", "ConnectionRefusedError", "OSError"}


def test_rtt_on_censored_paths(fresh_lab: Lab) -> None:
    m = fresh_lab.measure("a1", ["o3o.test"])["o3o.test"]
    connect = m["tcp"][0]["t"] - m["tcp"][0]["t0"]
    assert connect >= 0.040  # 20 ms each way through the national censor
    assert not HEALTHY.check(m)


def test_expectations_discriminate(fresh_lab: Lab) -> None:
    """Without its censor setup, every scenario but success must fail its own check."""
    failing = []
    for scenario in CATALOGUE:
        if scenario.name == "success":
            continue
        step = scenario.steps[0]
        fresh_lab.reset()
        measured = fresh_lab.measure(step.vantage, list(step.expect), *step.args)
        errors = [e for d, x in step.expect.items() for e in x.check(measured[d])]
        if not errors:
            failing.append(scenario.name)
    assert failing == [], f"these expectations hold without any censorship: {failing}"


def test_manifest_lists_every_namespace(lab: Lab) -> None:
    manifest = json.loads((lab.run_dir / "manifest.json").read_text())
    assert manifest["namespaces"] == lab.topo.namespaces
    assert len(topo.NETWORKS) >= 2
    assert Path(lab.ca_file).exists()
