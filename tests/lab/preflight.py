"""What the lab needs from the machine, checked before anything is created.

The lab runs as root (CI does). Without root it can run inside an unprivileged
user namespace where the kernel allows them: ``python -m tests.lab`` re-executes
itself under ``unshare --user --map-root-user --net --mount`` (see docs/lab.md).
When neither works, the error says exactly what is missing.
"""

from __future__ import annotations

import os
import shutil

TOOLS = ("ip", "iptables", "iptables-restore", "nginx")  # nginx: the collector's HTTPS


class LabUnavailable(RuntimeError):
    """The machine cannot run the lab; the message says why and what to do."""


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def require_lab_support() -> None:
    problems: list[str] = []
    if os.geteuid() != 0:
        problems.append(
            "not root: run as root, or through `python -m tests.lab` which re-executes "
            "itself in an unprivileged user namespace where the kernel allows them"
        )
    missing = missing_tools()
    if missing:
        problems.append(
            f"missing tools: {', '.join(missing)} "
            "(Debian: apt-get install -y iproute2 iptables nginx)"
        )
    if problems:
        raise LabUnavailable("the censorship lab cannot run here: " + "; ".join(problems))
