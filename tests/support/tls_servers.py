"""A loopback fediverse instance with one behaviour: healthy, broken, or behind a censor.

Where this sits in the data flow: after DNS, the probe connects to each address,
shakes hands with a decoy SNI, then with the instance's name, then asks the API
(``engine``). ``InstanceServer`` is what answers at that address: a Mastodon (or
a v1-only one, a NodeInfo-only one, a web site, an error page), a server that
resets, drops or closes right after the ClientHello, a certificate the probe must
reject (wrong name, untrusted CA, expired, huge), a server whose TLS shares no
cipher with the probe (a fatal alert), a response that trickles, never ends, is
malformed or ends in a ragged TLS close, an SNI filter in front of a healthy
instance, an address that goes dark after one connection, or plain HTTP.

Every connection is handled by one task that the server tracks; ``stop`` closes
the listener, cancels those tasks and waits for them, so that no socket or task
outlives the server (the tests run with ``-W error::ResourceWarning``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
from enum import StrEnum
from typing import Self

from tests.support.clienthello import parse_sni, read_client_hello
from tests.support.http_app import CLIENT_GONE, AppMode, serve_http
from tests.support.pki import TestPKI
from tests.support.tasks import cancel_all

WRONG_NAME = "unrelated-site.example"
# A TLS 1.2 suite with a SHA-1 MAC: Python's default client contexts exclude
# it (``!SHA1``), so the server finds no shared cipher and sends a fatal alert.
UNSHARED_CIPHER = "ECDHE-ECDSA-AES128-SHA"


class ServerBehaviour(StrEnum):
    MASTODON = "mastodon"
    MASTODON_V1_ONLY = "mastodon_v1_only"
    NODEINFO_ONLY = "nodeinfo_only"
    NOT_MASTODON = "not_mastodon"
    HTTP_500 = "http_500"
    RESET_AFTER_HELLO = "reset_after_hello"
    DROP_AFTER_HELLO = "drop_after_hello"
    EOF_AFTER_HELLO = "eof_after_hello"
    WRONG_NAME = "wrong_name"
    UNTRUSTED_CA = "untrusted_ca"
    EXPIRED = "expired"
    HUGE_CERT = "huge_cert"
    TRICKLE = "trickle"
    ENDLESS_BODY = "endless_body"
    # The Mastodon API with close-delimited bodies, each connection then closed
    # with a FIN and no TLS close_notify (a ragged EOF, as many servers do).
    RAGGED_CLOSE = "ragged_close"
    BROKEN_HTTP = "broken_http"  # valid TLS, then a response h11 must refuse
    SNI_FILTER = "sni_filter"
    PLAIN_HTTP = "plain_http"
    NO_SHARED_CIPHER = "no_shared_cipher"  # the server's fatal handshake_failure alert
    CLOSED = "closed"  # nothing listens: the kernel answers SYN with RST
    # Serves the first connection (the probe's decoy handshake), then the address
    # goes dark: later SYNs are dropped, as when an IP block starts mid-measurement.
    BLACKHOLE_AFTER_FIRST = "blackhole_after_first"


_APP_MODES = {
    ServerBehaviour.MASTODON_V1_ONLY: AppMode.V1_ONLY,
    ServerBehaviour.NODEINFO_ONLY: AppMode.NODEINFO_ONLY,
    ServerBehaviour.NOT_MASTODON: AppMode.NOT_MASTODON,
    ServerBehaviour.HTTP_500: AppMode.HTTP_500,
    ServerBehaviour.TRICKLE: AppMode.TRICKLE,
    ServerBehaviour.ENDLESS_BODY: AppMode.ENDLESS_BODY,
    ServerBehaviour.RAGGED_CLOSE: AppMode.CLOSE_DELIMITED,
    ServerBehaviour.BROKEN_HTTP: AppMode.BROKEN_HTTP,
}
_RAW_AFTER_HELLO = frozenset(
    {
        ServerBehaviour.RESET_AFTER_HELLO,
        ServerBehaviour.DROP_AFTER_HELLO,
        ServerBehaviour.EOF_AFTER_HELLO,
        ServerBehaviour.SNI_FILTER,
    }
)


class _TLSSetupFailed(Exception):
    """The server handshake failed or was cancelled.

    ``loop.start_tls`` has then closed the socket itself, but the stream's protocol
    never hears of it, so ``writer.wait_closed()`` would wait forever.
    """


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER 0, so the kernel sends a RST instead of a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def alert_handshake(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, context: ssl.SSLContext
) -> None:
    """A server handshake through memory BIOs that sends OpenSSL's fatal alert, if any.

    asyncio's own TLS transport drops the alert record that OpenSSL produces on a
    failed server handshake and just closes (the client then sees an EOF); a
    censor's or a misconfigured server's alert is what this behaviour is about.
    """
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_side=True)
    while True:
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            writer.write(outgoing.read())
            data = await reader.read(65536)
            if not data:
                return
            incoming.write(data)
        except ssl.SSLError:
            writer.write(outgoing.read())  # the alert
            await writer.drain()
            return
        else:
            raise AssertionError("the client accepted a cipher it should not offer")


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except CLIENT_GONE:
        pass


class InstanceServer:
    """One instance on ``ip:port`` (``port=0``: a free one) serving *names* with *behaviour*."""

    def __init__(
        self,
        ip: str,
        port: int,
        behaviour: ServerBehaviour,
        names: list[str],
        pki: TestPKI,
        blocked_sni: set[str] | None = None,
    ) -> None:
        self.ip = ip
        self.port = port
        self.behaviour = ServerBehaviour(behaviour)
        self.names = names
        self.pki = pki
        # By default an SNI filter blocks the instance's own names.
        self.blocked_sni = {n.lower() for n in (blocked_sni if blocked_sni is not None else names)}
        self.connections = 0
        self.seen_sni: list[str | None] = []  # SNI_FILTER: every ClientHello's SNI, in order
        self._server: asyncio.Server | None = None
        self._backend: InstanceServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._listener: socket.socket | None = None  # BLACKHOLE_AFTER_FIRST only
        self._filler: socket.socket | None = None
        self._context = self._make_context()

    def _make_context(self) -> ssl.SSLContext | None:
        b = ServerBehaviour
        if self.behaviour in _RAW_AFTER_HELLO or self.behaviour in (b.PLAIN_HTTP, b.CLOSED):
            return None
        if self.behaviour is b.WRONG_NAME:
            return self.pki.server_context([WRONG_NAME])
        if self.behaviour is b.UNTRUSTED_CA:
            return self.pki.server_context(self.names, issuer="untrusted")
        if self.behaviour is b.EXPIRED:
            return self.pki.server_context(self.names, expired=True)
        if self.behaviour is b.HUGE_CERT:
            return self.pki.server_context(self.names, huge=True)
        if self.behaviour is b.NO_SHARED_CIPHER:
            cert, key = self.pki.cert_files(self.names)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert, key)
            context.maximum_version = ssl.TLSVersion.TLSv1_2
            context.set_ciphers(UNSHARED_CIPHER)
            return context
        return self.pki.server_context(self.names)

    @property
    def endpoint(self) -> str:
        return f"{self.ip}:{self.port}"

    async def start(self) -> None:
        if self.behaviour is ServerBehaviour.SNI_FILTER:
            self._backend = InstanceServer(
                self.ip, 0, ServerBehaviour.MASTODON, self.names, self.pki
            )
            await self._backend.start()
        if self.behaviour is ServerBehaviour.CLOSED:
            return
        if self.behaviour is ServerBehaviour.BLACKHOLE_AFTER_FIRST:
            await self._start_blackhole()
            return
        self._server = await asyncio.start_server(self._handle, self.ip, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _start_blackhole(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.ip, self.port))
            # Backlog 0: Linux queues one connection, then drops SYNs (no RST), so
            # the client's connect times out.
            listener.listen(0)
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        self.port = listener.getsockname()[1]
        accept = asyncio.get_running_loop().create_task(self._accept_first())
        self._tasks.add(accept)
        accept.add_done_callback(self._tasks.discard)

    async def _accept_first(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._listener is not None
        conn, _ = await loop.sock_accept(self._listener)
        try:
            # Fill the one-connection accept queue before serving the first client.
            self._filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._filler.setblocking(False)
            await loop.sock_connect(self._filler, (self.ip, self.port))
            reader = asyncio.StreamReader()
            protocol = asyncio.StreamReaderProtocol(reader, self._handle)
            await loop.connect_accepted_socket(lambda: protocol, conn)
        except BaseException:
            conn.close()
            raise

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for sock in (self._listener, self._filler):
            if sock is not None:
                sock.close()
        self._listener = self._filler = None
        await cancel_all(self._tasks)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        if self._backend is not None:
            await self._backend.stop()
            self._backend = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        wait_closed = True
        try:
            await self._dispatch(reader, writer)
        except (*CLIENT_GONE, ValueError):
            pass  # the client went away, or sent something that is not TLS
        except _TLSSetupFailed:
            wait_closed = False
        except asyncio.CancelledError:
            # ``stop`` cancelled us and awaits us. Ending normally matters on 3.11:
            # asyncio's stream callback calls ``task.exception()`` on a cancelled
            # task and logs the CancelledError as an "Exception in callback".
            # Abort rather than close: a graceful TLS close waits for the peer.
            writer.transport.abort()
        finally:
            if wait_closed:
                writer.close()
                with contextlib.suppress(*CLIENT_GONE):
                    await writer.wait_closed()
            self._tasks.discard(task)

    async def _dispatch(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        b = ServerBehaviour
        if self.behaviour in _RAW_AFTER_HELLO:
            raw, hello = await read_client_hello(reader)
            if self.behaviour is b.RESET_AFTER_HELLO:
                reset(writer)
            elif self.behaviour is b.DROP_AFTER_HELLO:
                while await reader.read(65536):  # hold the socket until the client leaves
                    pass
            elif self.behaviour is b.SNI_FILTER:
                await self._filter(raw, hello, reader, writer)
            return  # EOF_AFTER_HELLO: the finally clause closes with a FIN
        if self.behaviour is b.NO_SHARED_CIPHER:
            assert self._context is not None
            await alert_handshake(reader, writer, self._context)
            return
        if self._context is not None:
            try:
                await writer.start_tls(self._context)
            except BaseException as exc:  # cancellation included: see _TLSSetupFailed
                raise _TLSSetupFailed from exc
        mode = _APP_MODES.get(self.behaviour, AppMode.MASTODON)
        await serve_http(reader, writer, mode, self.names[0])

    async def _filter(
        self, raw: bytes, hello: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        sni = parse_sni(hello)
        self.seen_sni.append(sni)
        if sni is not None and sni in self.blocked_sni:
            reset(writer)
            return
        assert self._backend is not None
        up_reader, up_writer = await asyncio.open_connection(self._backend.ip, self._backend.port)
        try:
            up_writer.write(raw)
            await up_writer.drain()
            async with asyncio.TaskGroup() as tg:
                down = tg.create_task(_pipe(up_reader, writer))
                up = tg.create_task(_pipe(reader, up_writer))
                # When either direction ends, tear both down (like a middlebox's flow).
                await asyncio.wait({down, up}, return_when=asyncio.FIRST_COMPLETED)
                up_writer.close()
                writer.close()
        finally:
            up_writer.close()
            with contextlib.suppress(*CLIENT_GONE, asyncio.CancelledError):
                await up_writer.wait_closed()
