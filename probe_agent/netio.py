"""Byte streams and the dialer: the transport under the TCP, TLS and HTTP steps.

A ``Stream`` is the smallest interface the steps need (send, recv, close). The
real dialer opens one non-blocking socket to one address (no happy eyeballs, no
pool: STYLE.md 3), so that every address gets its own connect, its own timeout
and its own failure. TLS (``tlsprobe``) wraps a ``Stream`` in another ``Stream``
and HTTP (``httpprobe``) speaks over either, so one connection carries the TCP
connect, the TLS handshake and the HTTP round trip of one address, as in OONI's
measurexlite. Tests replace the dialer with fakes that implement the protocols.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Protocol

RECV_CHUNK = 65536


class Stream(Protocol):
    """A connected byte stream; recv returns b"" at EOF; errors are raised as OSError."""

    async def send(self, data: bytes) -> None: ...

    async def recv(self, max_bytes: int = RECV_CHUNK) -> bytes: ...

    def close(self) -> None: ...


class Dialer(Protocol):
    """Opens one TCP connection to one address; raises OSError/TimeoutError on failure."""

    async def connect(self, ip: str, port: int, timeout: float) -> Stream: ...


class SocketStream:
    """A Stream over a non-blocking socket, driven by the event loop's sock_* calls."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._loop = asyncio.get_running_loop()

    async def send(self, data: bytes) -> None:
        await self._loop.sock_sendall(self._sock, data)

    async def recv(self, max_bytes: int = RECV_CHUNK) -> bytes:
        return await self._loop.sock_recv(self._sock, max_bytes)

    def close(self) -> None:
        self._sock.close()


class SocketDialer:
    """The real dialer: one socket, one address, one connect with its own timeout."""

    async def connect(self, ip: str, port: int, timeout: float) -> Stream:
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(timeout):
                await loop.sock_connect(sock, (ip, port))
        except BaseException:
            # Close on every path, cancellation included (STYLE.md 13).
            with contextlib.suppress(OSError):
                sock.close()
            raise
        return SocketStream(sock)
