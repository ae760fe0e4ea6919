"""The lab daemons' control sockets: one JSON request, one JSON reply, both sides."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
from collections.abc import Awaitable, Callable
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


Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


async def serve_until_stopped(
    path: str, handle: Handler, errors: tuple[type[BaseException], ...]
) -> None:
    """Answer requests on the unix socket *path* until SIGTERM or SIGINT.

    Prints ``ready`` once listening (the lab waits for that line). A request that
    raises one of *errors* gets ``{"ok": false, "error": ...}``; the daemon goes on.
    """

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            reply = await handle(json.loads(await reader.readline()))
        except (ValueError, *errors) as exc:
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        writer.write(json.dumps(reply).encode() + b"\n")
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(on_connection, path=path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    try:
        await stop.wait()
    finally:
        server.close()
