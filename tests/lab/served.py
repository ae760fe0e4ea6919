"""The collector served inside the lab's ``col`` namespace, driven from the host."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.lab import topology as topo
from tests.lab.lab import Lab

BIN = Path(sys.executable).parent
PORT = topo.COLLECTOR_PORT
# The lab reads the collector as its admin: every network and the exact times (the
# latencies are measured from them); public answers are k-anonymous and rounded.
ADMIN_TOKEN = "lab-admin-" + "a" * 30


class LabCollector:
    def __init__(
        self, lab: Lab, directory: Path, *serve_args: str, env: dict[str, str] | None = None
    ) -> None:
        self.lab = lab
        self.serve_args = serve_args
        self.env = env or {}
        self.token = ""
        self.db = directory / "collector.db"
        self.log = directory / "collector.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://{topo.COLLECTOR}:{PORT}"

    def cli(self, *args: str) -> str:
        result = subprocess.run(
            [str(BIN / "blockwatch-collector"), *args, "--database-url", f"sqlite:///{self.db}"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
            env={**os.environ, **self.env},
        )
        return result.stdout

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.lab.ns("col"),
                    str(BIN / "blockwatch-collector"),
                    "serve",
                    "--host",
                    topo.COLLECTOR,
                    "--port",
                    str(PORT),
                    "--mode",
                    "lab",
                    "--admin-token",
                    ADMIN_TOKEN,
                    "--database-url",
                    f"sqlite:///{self.db}",
                    *self.serve_args,
                ],
                stdout=log,
                stderr=log,
                env={**os.environ, **self.env},
            )
        address = (topo.COLLECTOR, PORT)
        probe = f"import socket; socket.create_connection({address!r}, timeout=1).close()"
        for _ in range(100):
            if self.lab.exec("col", [sys.executable, "-c", probe]).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(self.log.read_text()[-2000:])

    def api(self, path: str, *, admin: bool = True) -> Any:
        """GET an API path from inside the collector's namespace (JSON), as the admin
        unless *admin* is False (the public's view)."""
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"} if admin else {}
        request = f"urllib.request.Request({self.url + path!r}, headers={headers!r})"
        code = (
            "import json, sys, urllib.request; "
            f"print(urllib.request.urlopen({request}, timeout=30).read().decode())"
        )
        result = self.lab.exec("col", [sys.executable, "-c", code], timeout=60)
        if result.returncode != 0:
            raise RuntimeError(result.stderr[-2000:])
        return json.loads(result.stdout)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def rows(self) -> list[tuple[str, str, int, str, str]]:
        with sqlite3.connect(self.db) as conn:
            return list(
                conn.execute(
                    "SELECT measurement_id, cc, asn, network_source, domain FROM measurements"
                )
            )
