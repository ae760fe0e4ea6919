"""Build the probe's and the collector's images offline: ``make image``.

    python deploy/images.py [probe] [collector] [--tag TAG] [--base IMAGE] [--mirror URL]

No image registry is needed: the base is Debian bookworm with python3 made by
``debootstrap --variant=minbase`` from a Debian mirror (a package registry) and
imported with ``podman import`` (made once, kept as ``--base``; ``--rebuild-base``
makes it again), trimmed of what a Python service never reads. The Python
packages are wheels built here (``pip wheel``), copied into the build and
installed with ``--no-index``. ``podman build --runtime runc --format docker``
(docker format keeps HEALTHCHECK; runc because crun's setrlimit is refused in
some sandboxes). Prints each image's name and size. Needs root for
debootstrap, and podman, runc, debootstrap (``make debs``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIRROR = "http://deb.debian.org/debian"
BASE = "localhost/blockwatch-base:bookworm"
# What each image installs from the wheels.
IMAGES = {"probe": ".", "collector": ".[collector]"}
# What neither image needs from a minbase tree.
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


def run(argv: list[str], timeout: float = 900, **kw: object) -> str:
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, **kw
    )  # type: ignore[call-overload]
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:3])} failed:\n{result.stderr[-3000:]}")
    return str(result.stdout)


def version() -> str:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return str(project["version"])


def image_exists(name: str) -> bool:
    return subprocess.run(["podman", "image", "exists", name], check=False).returncode == 0


def trim(rootfs: Path) -> None:
    for pattern in TRIM:
        for path in rootfs.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


def make_base(name: str, mirror: str) -> None:
    with tempfile.TemporaryDirectory(prefix="blockwatch-rootfs-") as work:
        rootfs = Path(work) / "rootfs"
        argv = ["debootstrap", "--variant=minbase", "--include=python3", "bookworm"]
        run([*argv, str(rootfs), mirror], timeout=1800)
        trim(rootfs)
        with subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE) as tar:
            run(["podman", "import", "-", name], stdin=tar.stdout)
        if tar.returncode != 0:
            raise SystemExit("tar of the base root file system failed")


def build(kind: str, tag: str, base: str) -> str:
    context = REPO / "deploy" / kind
    wheels = context / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    pip = [sys.executable, "-m", "pip"]
    try:
        run([*pip, "wheel", "-q", "--wheel-dir", str(wheels), str(REPO) + IMAGES[kind][1:]])
        run([*pip, "download", "-q", "--no-deps", "-d", str(wheels), "pip"])
        name = f"localhost/blockwatch-{kind}:{tag}"
        run(
            ["podman", "build", "--runtime", "runc", "--format", "docker",
             "--build-arg", f"BASE={base}", "-f", str(context / "Containerfile"),
             "-t", name, str(context)],
            timeout=1800,
        )  # fmt: skip
    finally:
        shutil.rmtree(wheels, ignore_errors=True)
    return name


def size(name: str) -> int:
    return int(run(["podman", "image", "inspect", name, "--format", "{{.Size}}"]).strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("kinds", nargs="*", metavar="probe|collector", help="default: both")
    parser.add_argument("--tag", default=None, help="image tag (default: the version)")
    parser.add_argument("--base", default=BASE, help=f"base image (default {BASE})")
    parser.add_argument("--mirror", default=MIRROR, help="Debian mirror for debootstrap")
    parser.add_argument("--rebuild-base", action="store_true", help="make the base again")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.kinds) - set(IMAGES))
    if unknown:
        parser.error(f"unknown image(s) {', '.join(unknown)}: choose from {', '.join(IMAGES)}")
    missing = [t for t in ("podman", "runc", "debootstrap") if shutil.which(t) is None]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: `make debs` installs them")
    if args.rebuild_base or not image_exists(args.base):
        make_base(args.base, args.mirror)
    for kind in args.kinds or list(IMAGES):
        name = build(kind, args.tag or version(), args.base)
        print(f"{name} {size(name) / 1e6:.0f} MB", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
