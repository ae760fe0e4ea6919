"""The images, for real: built offline with podman, run under runc.

No registry is reachable here, so both images are built as `make image` builds
them (deploy/images.py): a base from `debootstrap --variant=minbase bookworm`
with python3, imported with `podman import`; the wheels built on the host;
`podman build --runtime runc` (crun fails on setrlimit in this sandbox). Each
runs under runc from an OCI bundle of the image (`podman run` always sets
rlimits, and this sandbox refuses setrlimit), read-only root, as the image's
user:

- the volunteer's probe inside a censored network's namespace (cn-a), against
  the lab's collector;
- the collector in the host's network, serving its API on loopback against a
  PostgreSQL database of its own: ready, a probe enrolled and a signed
  measurement accepted, metrics, then stopped by SIGTERM.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab import topology as topo
from tests.lab.lab import REPO, Lab
from tests.lab.test_probe_in_lab import TARGETS, LabCollector

pytestmark = pytest.mark.lab
BASE = "localhost/blockwatch-base:bookworm"


def _need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        message = f"missing {', '.join(missing)} (apt-get install -y podman runc debootstrap)"
        if os.environ.get("CI"):
            raise RuntimeError(message)
        pytest.skip(message)


def _run(argv: list[str], timeout: float = 600, **kw: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, **kw
    )  # type: ignore[call-overload]
    assert result.returncode == 0, f"{argv[:3]}: {result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def images() -> Iterator[dict[str, str]]:
    """Both images, built the way `make image` builds them (deploy/images.py)."""
    _need("podman", "runc", "debootstrap")
    script = [sys.executable, str(REPO / "deploy" / "images.py")]
    built = _run([*script, "probe", "collector", "--tag", "test", "--base", BASE], timeout=3000)
    names = {}
    for line in built.stdout.splitlines():
        name, megabytes, _unit = line.split()
        kind = name.split("/")[1].split(":")[0].removeprefix("blockwatch-")
        names[kind] = name
        print(f"\n{kind} image: {megabytes} MB")
    assert set(names) == {"probe", "collector"}, built.stdout
    yield names
    subprocess.run(["podman", "rmi", "-f", *names.values(), BASE], capture_output=True, check=False)
    subprocess.run(["podman", "image", "prune", "-f"], capture_output=True, check=False)


@pytest.fixture(scope="module")
def image(images: dict[str, str]) -> str:
    return images["probe"]


def _bundle(image: str, directory: Path) -> Path:
    """An OCI bundle of *image*: its root filesystem and a fresh `runc spec`."""
    directory.mkdir()
    container = _run(["podman", "create", image]).stdout.strip()
    try:
        mounted = _run(["podman", "mount", container]).stdout.strip()
        _run(["cp", "-a", mounted, str(directory / "rootfs")])
    finally:
        subprocess.run(["podman", "umount", container], capture_output=True, check=False)
        subprocess.run(["podman", "rm", container], capture_output=True, check=False)
    _run(["runc", "spec"], cwd=directory)
    return directory


@pytest.fixture
def collector(fresh_lab: Lab, tmp_path: Path) -> Iterator[LabCollector]:
    served = LabCollector(fresh_lab, tmp_path)
    served.cli("targets", "add", *TARGETS)
    served.token = served.cli("probes", "token").strip()  # type: ignore[attr-defined]
    served.start()
    yield served
    served.stop()


# The image fixture builds from the mirror first (debootstrap alone may take its
# own 900 s on a slow day; it took over 120 s in one CI run): the default
# 120 s per test would stop the build, not a hung test.
@pytest.mark.timeout(1800)
def test_the_container_measures_from_cn_a(
    image: str, fresh_lab: Lab, collector: LabCollector, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, 10001, 10001)  # the image's unprivileged user
    ca = tmp_path / "ca.pem"
    shutil.copy(fresh_lab.ca_file, ca)
    ca.chmod(0o644)
    bundle = _bundle(image, tmp_path / "bundle")
    config = json.loads((bundle / "config.json").read_text())
    process = config["process"]
    # The image's user, entrypoint and environment, as `podman run` would use them.
    process["user"] = {"uid": 10001, "gid": 10001}
    process["cwd"] = "/var/lib/blockwatch"
    process["args"] = [
        "blockwatch-probe",
        "run",
        "--once",
        "--cc",
        "CN",
        "--asn",
        "4134",
        "--ca-file",
        "/ca.pem",
        "--lab-network",
        topo.INTERNET_CIDR,
        "--timeout",
        "3",
    ]
    process["env"] = [
        "PATH=/opt/blockwatch/bin:/usr/bin:/bin",
        "BLOCKWATCH_STATE_DIR=/var/lib/blockwatch",
        f"BLOCKWATCH_COLLECTOR={collector.url}",
        f"BLOCKWATCH_ENROLL_TOKEN={collector.token}",  # type: ignore[attr-defined]
    ]
    process["terminal"] = False
    # This sandbox refuses setrlimit, which `podman run` always calls (crun and runc
    # alike): the bundle asks for no limits, so the container keeps the host's.
    process.pop("rlimits", None)
    config["root"]["readonly"] = True  # the state volume is the only writable place
    for ns in config["linux"]["namespaces"]:
        if ns["type"] == "network":  # join cn-a's network namespace
            ns["path"] = f"/run/netns/{fresh_lab.ns('a1')}"
    resolv = Path("/etc/netns") / fresh_lab.ns("a1") / "resolv.conf"
    config["mounts"] += [
        {
            "destination": "/var/lib/blockwatch",
            "type": "bind",
            "source": str(state),
            "options": ["rbind", "rw"],
        },
        {"destination": "/ca.pem", "type": "bind", "source": str(ca), "options": ["rbind", "ro"]},
        {
            "destination": "/etc/resolv.conf",
            "type": "bind",
            "source": str(resolv),
            "options": ["rbind", "ro"],
        },
    ]
    (bundle / "config.json").write_text(json.dumps(config))
    name = f"blockwatch-test-{fresh_lab.prefix}"
    result = subprocess.run(
        ["runc", "run", "--bundle", str(bundle), name],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    subprocess.run(["runc", "delete", "--force", name], capture_output=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = collector.rows()
    assert sorted(r[4] for r in rows) == sorted(TARGETS)
    assert {(r[1], r[2], r[3]) for r in rows} == {("CN", 4134, "declared")}
    # The key stayed in the volume, readable by the probe's user only.
    assert (state / "key.pem").stat().st_mode & 0o077 == 0


@pytest.mark.timeout(1800)
def test_the_collector_image_serves_the_api_on_postgresql(
    images: dict[str, str], tmp_path: Path
) -> None:
    from tests.collector.conftest import scratch_database

    with scratch_database("bw_image") as database_url:
        _serve_the_image(images["collector"], database_url, tmp_path)


def _serve_the_image(image: str, database_url: str, tmp_path: Path) -> None:
    import httpx

    from tests.collector.helpers import TestProbe
    from tests.collector.serving import free_port

    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    key = data / "collector-key.pem"
    _run([str(Path(sys.executable).parent / "blockwatch-collector"), "keygen", "--out", str(key)])
    os.chown(data, 10002, 10002)  # the image's unprivileged user
    os.chown(key, 10002, 10002)
    port = free_port()
    token = "image-admin-" + "t" * 32
    bundle = _bundle(image, tmp_path / "bundle")
    config = json.loads((bundle / "config.json").read_text())
    process = config["process"]
    process["user"] = {"uid": 10002, "gid": 10002}
    process["cwd"] = "/var/lib/blockwatch-collector"
    # The image's entrypoint, the port moved off 8080 (the host's network is shared).
    process["args"] = ["blockwatch-collector", "serve", "--host", "127.0.0.1", "--port", str(port)]
    process["env"] = [
        "PATH=/opt/blockwatch/bin:/usr/bin:/bin",
        f"BLOCKWATCH_DATABASE_URL={database_url}",
        f"BLOCKWATCH_ADMIN_TOKEN={token}",
        "BLOCKWATCH_KEY_FILE=/var/lib/blockwatch-collector/collector-key.pem",
        "BLOCKWATCH_SECRET_KEY=dGVzdC1zZWFsaW5nLWtleS1ub3QtYS1zZWNyZXQtMDA=",
        "BLOCKWATCH_OPEN_ENROLLMENT=false",
        "PYTHONDONTWRITEBYTECODE=1",
    ]
    process["terminal"] = False
    process.pop("rlimits", None)
    config["root"]["readonly"] = True  # the data volume and /tmp are the only writable places
    config["linux"]["namespaces"] = [
        ns for ns in config["linux"]["namespaces"] if ns["type"] != "network"
    ]  # the host's network: loopback reaches PostgreSQL and the test
    config["mounts"] += [
        {"destination": "/var/lib/blockwatch-collector", "type": "bind", "source": str(data),
         "options": ["rbind", "rw"]},
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "nodev", "mode=1777", "size=64m"]},
        {"destination": "/etc/resolv.conf", "type": "bind", "source": "/etc/resolv.conf",
         "options": ["rbind", "ro"]},
    ]  # fmt: skip
    (bundle / "config.json").write_text(json.dumps(config))
    container = f"blockwatch-collector-test-{os.getpid()}"
    log = tmp_path / "collector.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["runc", "run", "--bundle", str(bundle), container], stdout=out, stderr=out
        )
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {token}"}
    try:
        deadline = time.monotonic() + 120
        ready = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = httpx.get(base + "/readyz", timeout=2)
                if ready.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        assert ready is not None and ready.status_code == 200, log.read_text()[-3000:]
        assert ready.json()["checks"]["database"] == "ok"
        assert httpx.post(base + "/api/v1/targets", json={"domains": ["alive.bar"]},
                          headers=auth).status_code == 201  # fmt: skip
        made = httpx.post(base + "/api/v1/probes/tokens", json={"cc": "CN", "asn": 4134},
                          headers=auth)  # fmt: skip
        assert made.status_code == 201, made.text
        probe = TestProbe(declared={"cc": "CN", "asn": 4134})
        enrolled = httpx.post(base + "/api/v1/probes/enroll",
                              json=probe.enroll(made.json()["token"]))  # fmt: skip
        assert enrolled.status_code == 201, enrolled.text
        sent = httpx.post(base + "/api/v1/measurements", json={"measurements": [probe.measure()]})
        assert sent.status_code == 200 and sent.json()["accepted"] == 1, sent.text
        metrics = httpx.get(base + "/metrics", headers=auth)
        assert 'blockwatch_measurements_total{status="accepted"} 1.0' in metrics.text
    finally:
        subprocess.run(["runc", "kill", container, "TERM"], capture_output=True, check=False)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            subprocess.run(["runc", "kill", container, "KILL"], capture_output=True, check=False)
            proc.wait(timeout=10)
        subprocess.run(["runc", "delete", "--force", container], capture_output=True, check=False)
    assert proc.returncode == 0, log.read_text()[-3000:]  # a clean stop on SIGTERM
    # The key stayed the operator's: in the volume, readable by the image's user only.
    assert key.stat().st_mode & 0o077 == 0
