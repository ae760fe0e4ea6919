"""Byte streams and the dialer: the transport under the TCP, TLS and HTTP steps.

A ``Stream`` is the smallest interface the steps need (send, recv, close). The
real dialer opens one connection to one address (no happy eyeballs, no pool:
CONTRIBUTING.md 3), so that every address gets its own connect, its own timeout and its
own failure. TLS (``tlsprobe``) wraps a ``Stream`` in another ``Stream`` and HTTP
(``httpprobe``) speaks over either, so one connection carries the TCP connect,
the TLS handshake and the HTTP round trip of one address, as in OONI's
measurexlite. Tests replace the dialer with fakes that implement the protocols.

The real stream is an asyncio ``Protocol``: the event loop keeps the socket
registered and hands us bytes, which costs far less per read than ``sock_recv``
(which re-registers the socket on every wait). What the network did is kept
exactly: EOF as an empty read, a reset as the ``OSError`` the kernel gave.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Protocol, cast

RECV_CHUNK = 65536


class Stream(Protocol):
    """A connected byte stream; recv returns b"" at EOF; errors are raised as OSError."""

    async def send(self, data: bytes) -> None: ...

    async def recv(self, max_bytes: int = RECV_CHUNK) -> bytes: ...

    def close(self) -> None: ...


class Dialer(Protocol):
    """Opens one TCP connection to one address; raises OSError/TimeoutError on failure."""

    async def connect(self, ip: str, port: int, timeout: float) -> Stream: ...


class _StreamProtocol(asyncio.Protocol):
    """Buffers what arrives; remembers EOF and the error that ended the connection."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.paused_writer: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance check: uvloop's transports (the collector's control
        # prober runs under uvicorn's loop) have the interface, not the base class.
        self.transport = cast(asyncio.Transport, transport)

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return True  # keep our side open: the steps decide when to close

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self.error = exc
        self.eof = True
        self._wake()
        if self.paused_writer is not None and not self.paused_writer.done():
            self.paused_writer.set_result(None)

    def pause_writing(self) -> None:
        self.paused_writer = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.paused_writer is not None and not self.paused_writer.done():
            self.paused_writer.set_result(None)
        self.paused_writer = None


class TransportStream:
    """A Stream over an asyncio transport and ``_StreamProtocol``."""

    def __init__(self, transport: asyncio.Transport, protocol: _StreamProtocol) -> None:
        self._transport = transport
        self._protocol = protocol

    async def send(self, data: bytes) -> None:
        p = self._protocol
        if p.error is not None:
            raise p.error
        if self._transport.is_closing():
            raise ConnectionResetError("connection closed")
        self._transport.write(data)
        if p.paused_writer is not None:
            await p.paused_writer
            if p.error is not None:
                raise p.error

    async def recv(self, max_bytes: int = RECV_CHUNK) -> bytes:
        p = self._protocol
        while not p.buffer:
            if p.error is not None:
                raise p.error
            if p.eof:
                return b""
            p.waiter = asyncio.get_running_loop().create_future()
            try:
                await p.waiter
            finally:
                p.waiter = None
        chunk = bytes(p.buffer[:max_bytes])
        del p.buffer[:max_bytes]
        return chunk

    def close(self) -> None:
        # abort, not close: a graceful close waits for unsent data, and a censor
        # that blackholed the connection would keep that data (and us) forever.
        self._transport.abort()


class SocketDialer:
    """The real dialer: one socket, one address, one connect with its own timeout."""

    async def connect(self, ip: str, port: int, timeout: float) -> Stream:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        async with asyncio.timeout(timeout):
            # A literal address and one family: asyncio makes exactly one attempt
            # and re-raises its OSError unchanged (errno intact).
            transport, protocol = await loop.create_connection(
                _StreamProtocol, host=ip, port=port, family=family
            )
        return TransportStream(transport, protocol)


async def recv_exactly(stream: Stream, size: int) -> bytes:
    """Read exactly *size* bytes; EOFError if the peer closes first."""
    data = bytearray()
    while len(data) < size:
        chunk = await stream.recv(size - len(data))
        if not chunk:
            raise EOFError(f"connection closed after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)
