"""The HTTP/1.1 side of a loopback instance: a Mastodon-like API and its broken variants.

Where this sits in the data flow: after the TLS handshake the probe asks the
instance for ``/api/v2/instance``, then ``/api/v1/instance``, then
``/.well-known/nodeinfo`` on the same keep-alive connection (``httpprobe``).
``serve_http`` answers those requests over any asyncio stream (plain or TLS) in
one of a few modes: a full Mastodon, one that only knows API v1, one that only
has NodeInfo, a web site that is no instance, an error page, a response that
trickles one byte every half second, or a chunked body that never ends.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from enum import StrEnum

MASTODON_VERSION = "4.3.0"
NODEINFO_REL = "http://nodeinfo.diaspora.software/ns/schema/2.0"
TRICKLE_INTERVAL = 0.5
ENDLESS_CHUNK = b"x" * 16384
ENDLESS_MAX_BYTES = 64 * 1024 * 1024
BROKEN_RESPONSE = b"HTTP/1.1 200 OK\r\nX-Filtered by middlebox\r\nContent-Length: 0\r\n\r\n"
_REASONS = {200: "OK", 404: "Not Found", 500: "Internal Server Error"}
# What a closed, reset or torn-down client connection raises on our side.
CLIENT_GONE = (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, OSError)


class AppMode(StrEnum):
    MASTODON = "mastodon"
    V1_ONLY = "v1_only"
    NODEINFO_ONLY = "nodeinfo_only"
    NOT_MASTODON = "not_mastodon"
    HTTP_500 = "http_500"
    TRICKLE = "trickle"
    ENDLESS_BODY = "endless_body"
    # No Content-Length: the body ends when the connection does, closed with a FIN
    # but without TLS close_notify (a "ragged" EOF, common in the wild).
    CLOSE_DELIMITED = "close_delimited"
    BROKEN_HTTP = "broken_http"  # a header line without a colon (a broken middlebox)


def _json(doc: object) -> tuple[int, str, bytes]:
    return 200, "application/json; charset=utf-8", json.dumps(doc).encode()


def _html(status: int, title: str) -> tuple[int, str, bytes]:
    page = f"<!DOCTYPE html><html><head><title>{title}</title></head><body>{title}</body></html>"
    return status, "text/html; charset=utf-8", page.encode()


def instance_v2(domain: str) -> dict[str, object]:
    return {
        "domain": domain,
        "title": f"{domain} (test instance)",
        "version": MASTODON_VERSION,
        "source_url": "https://github.com/mastodon/mastodon",
        "description": "A loopback Mastodon for blockwatch's integration tests.",
        "registrations": {"enabled": False, "approval_required": False},
    }


def instance_v1(domain: str) -> dict[str, object]:
    return {
        "uri": domain,
        "title": f"{domain} (test instance)",
        "version": MASTODON_VERSION,
        "short_description": "A loopback Mastodon.",
    }


def nodeinfo_links(domain: str) -> dict[str, object]:
    return {"links": [{"rel": NODEINFO_REL, "href": f"https://{domain}/nodeinfo/2.0"}]}


def route(mode: AppMode, domain: str, path: str) -> tuple[int, str, bytes]:
    """(status, content type, body) that an instance in *mode* answers for *path*."""
    if mode is AppMode.HTTP_500:
        return _html(500, "We're sorry, but something went wrong")
    if mode is AppMode.NOT_MASTODON:
        return _html(200, f"Welcome to {domain}")
    v2_ok = mode in (
        AppMode.MASTODON,
        AppMode.TRICKLE,
        AppMode.ENDLESS_BODY,
        AppMode.CLOSE_DELIMITED,
    )
    v1_ok = v2_ok or mode is AppMode.V1_ONLY
    if path == "/api/v2/instance" and v2_ok:
        return _json(instance_v2(domain))
    if path == "/api/v1/instance" and v1_ok:
        return _json(instance_v1(domain))
    if path == "/.well-known/nodeinfo":
        return _json(nodeinfo_links(domain))
    if path == "/":
        return _html(200, f"{domain}: a Mastodon instance")
    return _html(404, "The page you are looking for isn't here.")


def _head(status: int, content_type: str, extra: list[str]) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
        "Server: blockwatch-test-instance",
        f"Content-Type: {content_type}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, bool] | None:
    """The path of the next request and whether the client asked to close; None at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    path = parts[1] if len(parts) == 3 else "/"
    close = any(
        line.lower().startswith("connection:") and "close" in line.lower() for line in lines[1:]
    )
    return path.split("?", 1)[0], close


async def ragged_close(writer: asyncio.StreamWriter) -> None:
    """Flush, then send a FIN under the TLS layer (no close_notify) and drop the connection."""
    await writer.drain()
    for _ in range(100):  # drain() only waits below the high-water mark: wait for empty
        if writer.transport.get_write_buffer_size() == 0:
            break
        await asyncio.sleep(0.01)
    sock = writer.get_extra_info("socket")  # the TCP socket, under any TLS layer
    if sock is not None:
        sock.shutdown(socket.SHUT_WR)
    writer.transport.abort()


async def serve_http(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, mode: AppMode, domain: str
) -> None:
    """Answer requests on one keep-alive connection until the client goes away."""
    try:
        while (request := await _read_request(reader)) is not None:
            path, close = request
            status, content_type, body = route(mode, domain, path)
            if mode is AppMode.ENDLESS_BODY and status == 200:
                writer.write(_head(status, content_type, ["Transfer-Encoding: chunked"]))
                chunk = f"{len(ENDLESS_CHUNK):x}\r\n".encode() + ENDLESS_CHUNK + b"\r\n"
                # Until the client gives up and closes (the probe stops at its body
                # cap), or a bound no client should need.
                for _ in range(ENDLESS_MAX_BYTES // len(ENDLESS_CHUNK)):
                    if writer.is_closing():
                        return
                    writer.write(chunk)
                    await writer.drain()
                    # drain() does not yield while the transport is not paused, and a
                    # transport whose peer is gone drops writes without pausing: yield,
                    # so that the loop can deliver connection_lost.
                    await asyncio.sleep(0)
                return
            if mode is AppMode.BROKEN_HTTP:
                writer.write(BROKEN_RESPONSE)
                await writer.drain()
                continue
            if mode is AppMode.CLOSE_DELIMITED:
                writer.write(_head(status, content_type, ["Connection: close"]) + body)
                await ragged_close(writer)
                return
            extra = [f"Content-Length: {len(body)}"] + (["Connection: close"] if close else [])
            response = _head(status, content_type, extra) + body
            if mode is AppMode.TRICKLE:
                for i in range(len(response)):
                    writer.write(response[i : i + 1])
                    await writer.drain()
                    await asyncio.sleep(TRICKLE_INTERVAL)
            else:
                writer.write(response)
                await writer.drain()
            if close:
                return
    except CLIENT_GONE:
        return
