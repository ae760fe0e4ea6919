"""The client side of the lab daemons' control sockets: one JSON request, one reply."""

from __future__ import annotations

import json
import socket
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any


class ControlError(RuntimeError):
    """A lab daemon refused a request."""


class Control:
    def __init__(self, path: Path) -> None:
        self.path = path

    def request(self, **request: Any) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(self.path))
            sock.sendall(json.dumps(request).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        reply: dict[str, Any] = json.loads(data)
        if not reply.get("ok"):
            raise ControlError(f"{self.path.name}: {reply.get('error')}")
        return reply

    def set_policy(self, policy: Any) -> None:
        """Replace a censor's whole policy (a ``Policy`` or a dict of its fields)."""
        body = asdict(policy) if is_dataclass(policy) else dict(policy)
        self.request(op="set", policy=body)

    def policy(self) -> dict[str, Any]:
        return self.request(op="get")["policy"]  # type: ignore[no-any-return]

    def stats(self) -> dict[str, Any]:
        return self.request(op="stats")
