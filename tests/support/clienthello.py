"""Reading a TLS ClientHello off a raw stream and finding its SNI, as a middlebox does.

Where this sits in the data flow: the probe's TLS step sends a ClientHello with
the decoy SNI, then one with the instance's name (``tlsprobe``). A censor's SNI
filter, and the servers that reset, drop or close right after the hello, read
exactly that message and no more: reading the whole hello matters, because a
socket closed with unread data sends a RST instead of the FIN we mean to send.

Formats: RFC 8446 section 5.1 (records), 4.1.2 (ClientHello), RFC 6066 section 3
(server_name). The hello may span several records; they are reassembled.
"""

from __future__ import annotations

import asyncio
import struct

RECORD_HANDSHAKE = 22
HANDSHAKE_CLIENT_HELLO = 1
EXTENSION_SERVER_NAME = 0
NAME_TYPE_HOST = 0
MAX_HELLO = 64 * 1024


async def read_client_hello(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """Read whole records until one handshake message is complete.

    Returns (the raw bytes read, the handshake message). Raises
    ``asyncio.IncompleteReadError`` at EOF and ``ValueError`` for something that
    is not a TLS handshake.
    """
    raw = bytearray()
    message = bytearray()
    while True:
        header = await reader.readexactly(5)
        content_type, _version, length = struct.unpack("!BHH", header)
        if content_type != RECORD_HANDSHAKE:
            raise ValueError(f"not a TLS handshake record (type {content_type})")
        body = await reader.readexactly(length)
        raw += header + body
        message += body
        if len(message) >= 4:
            needed = 4 + int.from_bytes(message[1:4], "big")
            if len(message) >= needed:
                return bytes(raw), bytes(message[:needed])
        if len(raw) > MAX_HELLO:
            raise ValueError("ClientHello larger than any real client sends")


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise ValueError("truncated ClientHello")
        chunk = self.data[self.at : self.at + n]
        self.at += n
        return chunk

    def number(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def vector(self, length_size: int) -> bytes:
        return self.take(self.number(length_size))


def parse_sni(message: bytes) -> str | None:
    """The host name of the server_name extension of a ClientHello message, if any."""
    cur = _Cursor(message)
    if cur.number(1) != HANDSHAKE_CLIENT_HELLO:
        raise ValueError("not a ClientHello")
    cur.take(3)  # message length, already checked by the reader
    cur.take(2 + 32)  # legacy_version, random
    cur.vector(1)  # legacy_session_id
    cur.vector(2)  # cipher_suites
    cur.vector(1)  # legacy_compression_methods
    if cur.at == len(message):
        return None  # no extensions at all
    extensions = _Cursor(cur.vector(2))
    while extensions.at < len(extensions.data):
        ext_type = extensions.number(2)
        ext_data = extensions.vector(2)
        if ext_type != EXTENSION_SERVER_NAME:
            continue
        names = _Cursor(_Cursor(ext_data).vector(2))
        while names.at < len(names.data):
            name_type = names.number(1)
            name = names.vector(2)
            if name_type == NAME_TYPE_HOST:
                return name.decode("ascii", "replace").lower()
    return None
