"""The volunteer's container, for real: built offline with podman, run in cn-a.

No registry is reachable here, so the base image is made the way
deploy/probe/README.md says: `debootstrap --variant=minbase bookworm` with
python3, imported with `podman import`; the probe's wheels are built on the
host; `podman build --runtime runc` (crun fails on setrlimit in this sandbox).
The container then runs inside a censored network's namespace (`--network
host` there is that namespace) against the lab's collector. It runs under runc
from an OCI bundle of the image: `podman run` always sets rlimits, and this
sandbox refuses setrlimit.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab import topology as topo
from tests.lab.lab import REPO, Lab
from tests.lab.test_probe_in_lab import TARGETS, LabCollector

pytestmark = pytest.mark.lab
IMAGE = "localhost/blockwatch-probe:test"
BASE = "localhost/blockwatch-base:bookworm"
MIRROR = "http://deb.debian.org/debian"  # the machine's apt mirror (a package registry)


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
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    _need("podman", "runc", "debootstrap")
    work = tmp_path_factory.mktemp("image")
    rootfs = work / "rootfs"
    _run(
        ["debootstrap", "--variant=minbase", "--include=python3", "bookworm", str(rootfs), MIRROR],
        timeout=900,
    )
    _trim(rootfs)
    with subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE) as tar:
        _run(["podman", "import", "-", BASE], stdin=tar.stdout)
    assert tar.returncode == 0
    wheels = REPO / "deploy" / "probe" / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    pip = [sys.executable, "-m", "pip"]
    _run([*pip, "wheel", "-q", "--wheel-dir", str(wheels), str(REPO)])
    _run([*pip, "download", "-q", "--no-deps", "-d", str(wheels), "pip"])
    try:
        _run(
            [
                "podman",
                "build",
                "--runtime",
                "runc",
                "--format",
                "docker",
                "--build-arg",
                f"BASE={BASE}",
                "-f",
                str(REPO / "deploy/probe/Containerfile"),
                "-t",
                IMAGE,
                str(REPO / "deploy/probe"),
            ]
        )
    finally:
        shutil.rmtree(wheels, ignore_errors=True)
        shutil.rmtree(rootfs, ignore_errors=True)
    size = _run(["podman", "image", "inspect", IMAGE, "--format", "{{.Size}}"]).stdout
    print(f"\nprobe image: {int(size) / 1e6:.0f} MB")
    yield IMAGE
    subprocess.run(["podman", "rmi", "-f", IMAGE, BASE], capture_output=True, check=False)
    subprocess.run(["podman", "image", "prune", "-f"], capture_output=True, check=False)


# What a probe's image does not need from a minbase tree (deploy/probe/README.md).
TRIM = (
    "var/cache/apt/*",
    "var/lib/apt/lists/*",
    "var/log/*",
    "usr/share/doc/*",
    "usr/share/man/*",
    "usr/share/locale/*",
    "usr/share/info/*",
    "usr/lib/x86_64-linux-gnu/gconv",
    "usr/share/zoneinfo",
    "var/lib/dpkg/info/*",
    "usr/lib/apt",
    "usr/bin/perl*",
    "usr/lib/x86_64-linux-gnu/perl-base",
)


def _trim(rootfs: Path) -> None:
    for pattern in TRIM:
        for path in rootfs.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


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
