"""HTTP round trips over scripted streams: parsing, fallbacks, caps, failures."""

from __future__ import annotations

import json

import pytest

from probe_agent.measure.http import API_PATHS, HTTPSettings, fetch_instance_api, identify
from probe_agent.protocol.vocabulary import UNKNOWN_FAILURE_PREFIX, Failure
from tests.probe_agent.fakes import FakeClock, ScriptedStream


def response(status: int, body: bytes, extra: str = "") -> bytes:
    return f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


V2 = json.dumps({"domain": "alive.bar", "version": "4.3.0"}).encode()
V1 = json.dumps({"uri": "alive.bar", "version": "4.3.0"}).encode()
NODEINFO = json.dumps(
    {"links": [{"rel": "http://nodeinfo.diaspora.software/ns/schema/2.1", "href": "x"}]}
).encode()


async def fetch(stream: ScriptedStream, cap: int = 1024, scheme: str = "https", port: int = 443):
    return await fetch_instance_api(
        stream,
        scheme=scheme,
        domain="alive.bar",
        ip="45.76.1.2",
        port=port,
        settings=HTTPSettings(timeout=1.0, body_cap=cap),
        clock=FakeClock(),
    )


async def test_v2_answer_is_mastodon() -> None:
    stream = ScriptedStream([response(200, V2, "Server: nginx\r\n")])
    [obs] = await fetch(stream)
    assert obs.url == "https://alive.bar/api/v2/instance"
    assert obs.status_code == 200
    assert obs.mastodon
    assert obs.instance_domain == "alive.bar"
    assert obs.body_length == len(V2)
    assert obs.headers["server"] == "nginx"
    assert obs.failure is None
    assert b"Host: alive.bar\r\n" in stream.sent
    assert obs.t0 < obs.t


async def test_fallbacks_reuse_the_connection() -> None:
    stream = ScriptedStream([response(404, b"no"), response(404, b"no"), response(200, NODEINFO)])
    observations = await fetch(stream)
    assert [o.url.split("alive.bar")[1] for o in observations] == list(API_PATHS)
    assert [o.mastodon for o in observations] == [False, False, True]
    assert observations[2].software == "nodeinfo"
    assert stream.sent.count(b"GET ") == 3


async def test_v1_fallback_parses_uri() -> None:
    [first, second] = await fetch(ScriptedStream([response(404, b""), response(200, V1)]))
    assert not first.mastodon
    assert second.mastodon
    assert second.instance_domain == "alive.bar"


async def test_non_default_port_goes_in_host_and_url() -> None:
    stream = ScriptedStream([response(200, V2)])
    [obs] = await fetch(stream, port=8443)
    assert obs.url == "https://alive.bar:8443/api/v2/instance"
    assert b"Host: alive.bar:8443\r\n" in stream.sent


async def test_block_page_is_not_mastodon() -> None:
    page = b"<html>blocked</html>"
    observations = await fetch(
        ScriptedStream([response(200, page), response(200, page), response(200, page)])
    )
    assert len(observations) == 3
    assert not any(o.mastodon for o in observations)


async def test_body_cap_truncates_and_stops() -> None:
    body = b"x" * 5000
    observations = await fetch(ScriptedStream([response(200, body)]), cap=1000)
    assert len(observations) == 1  # the connection still holds the rest: no reuse
    assert observations[0].body_truncated
    assert observations[0].body_length == 1000


async def test_reset_mid_response() -> None:
    stream = ScriptedStream(
        [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc", ConnectionResetError()]
    )
    [obs] = await fetch(stream)
    assert obs.failure == Failure.CONNECTION_RESET.value
    assert obs.failed_operation == "http_transaction"
    assert obs.status_code == 200


async def test_eof_before_response() -> None:
    [obs] = await fetch(ScriptedStream([b""]))
    assert obs.failure == Failure.EOF.value


async def test_eof_mid_body() -> None:
    [obs] = await fetch(ScriptedStream([b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc", b""]))
    assert obs.failure == Failure.EOF.value


async def test_garbage_is_unknown_failure() -> None:
    [obs] = await fetch(ScriptedStream([b"SSH-2.0-OpenSSH_9.2\r\n\r\n"]))
    assert obs.failure is not None
    assert obs.failure.startswith(UNKNOWN_FAILURE_PREFIX + "malformed HTTP response")


async def test_chunked_body() -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + (
        f"{len(V2):x}\r\n".encode() + V2 + b"\r\n0\r\n\r\n"
    )
    [obs] = await fetch(ScriptedStream([chunked[:20], chunked[20:]]))
    assert obs.mastodon


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        ("/api/v2/instance", V2, True),
        ("/api/v1/instance", V1, True),
        ("/.well-known/nodeinfo", NODEINFO, True),
        ("/api/v2/instance", V1, False),
        ("/api/v2/instance", b"[1, 2]", False),
        ("/api/v2/instance", b"\xff\xfe", False),
        ("/.well-known/nodeinfo", b'{"links": "x"}', False),
    ],
)
def test_identify(path: str, body: bytes, expected: bool) -> None:
    assert identify(path, body).mastodon is expected
