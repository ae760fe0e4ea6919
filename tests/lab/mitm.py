"""TLS interception: the censor's proxy that presents a certificate from an untrusted CA.

The censor redirects an intercepted address's port 443 here (iptables nat
REDIRECT). The proxy picks the certificate for the ClientHello's SNI from
leaves the lab issued in advance with its *untrusted* CA, completes the
handshake, then opens its own TLS connection to the original destination
(``SO_ORIGINAL_DST``) and relays plaintext both ways, as interception
middleboxes do. A client that validates certificates stops at the handshake
with ``ssl_unknown_authority``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
from pathlib import Path

SO_ORIGINAL_DST = 80


def _contexts(cert_dir: Path) -> dict[str, ssl.SSLContext]:
    found: dict[str, ssl.SSLContext] = {}
    for cert in cert_dir.glob("mitm-*.pem"):
        name = cert.stem.removeprefix("mitm-")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, cert.with_suffix(".key"))
        found[name] = ctx
    return found


def _original_destination(writer: asyncio.StreamWriter) -> tuple[str, int]:
    sock: socket.socket = writer.get_extra_info("socket")
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, packed = struct.unpack_from("!2xH4s", raw)
    return socket.inet_ntoa(packed), port


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(ConnectionError, ssl.SSLError, OSError):
        writer.close()


async def start_mitm(port: int, cert_dir: Path) -> asyncio.Server:
    contexts = _contexts(cert_dir)
    default = next(iter(contexts.values()), None)
    front = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if default is not None:
        first = next(cert_dir.glob("mitm-*.pem"))
        front.load_cert_chain(first, first.with_suffix(".key"))
    chosen: dict[int, str] = {}

    def pick(obj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        if name and name in contexts:
            obj.context = contexts[name]
            chosen[id(obj)] = name

    front.sni_callback = pick  # type: ignore[assignment]
    upstream_ctx = ssl.create_default_context()
    upstream_ctx.check_hostname = False
    upstream_ctx.verify_mode = ssl.CERT_NONE

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            ip, dport = _original_destination(writer)
            obj = writer.get_extra_info("ssl_object")
            name = chosen.pop(id(obj), None) if obj is not None else None
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(ip, dport, ssl=upstream_ctx, server_hostname=name),
                timeout=5,
            )
        except (OSError, TimeoutError, ssl.SSLError):
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    return await asyncio.start_server(handle, "0.0.0.0", port, ssl=front)
