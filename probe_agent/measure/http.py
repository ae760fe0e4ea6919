"""HTTP round trips over the connection the TLS step measured, parsed by h11.

The probe asks the instance for its Mastodon API answer (``/api/v2/instance``,
then ``/api/v1/instance``, then ``/.well-known/nodeinfo``) on the same
keep-alive connection that carried the measured handshake: no second handshake,
no second ClientHello for an SNI filter to see. Bodies are capped and each
request has its own timeout, so an endless or trickling body ends as
``body_truncated`` or ``generic_timeout_error``, never as a hang.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import h11

from probe_agent.measure.clock import Clock
from probe_agent.measure.failures import NETWORK_ERRORS, classify
from probe_agent.measure.netio import Stream
from probe_agent.measure.observations import HTTPObservation
from probe_agent.protocol.vocabulary import Operation

API_PATHS = ("/api/v2/instance", "/api/v1/instance", "/.well-known/nodeinfo")
# Headers worth keeping as evidence: a block page names its server or redirects.
KEPT_HEADERS = ("server", "content-type", "location", "content-length")
# A common browser's User-Agent: on plain HTTP the censor sees it, and a
# tool-specific one would single out the volunteer's traffic.
USER_AGENT = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:140.0) Gecko/20100101 Firefox/140.0"
NODEINFO_SCHEMA = "http://nodeinfo.diaspora.software/ns/schema/"


@dataclass(frozen=True, slots=True)
class HTTPSettings:
    timeout: float = 10.0
    body_cap: int = 256 * 1024


@dataclass(slots=True)
class _Identity:
    mastodon: bool = False
    instance_domain: str | None = None
    software: str | None = None


def identify(path: str, body: bytes) -> _Identity:
    """Recognise a fediverse instance's API answer (pure; used by the analysis too)."""
    try:
        doc: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return _Identity()
    if not isinstance(doc, dict):
        return _Identity()
    if path == "/api/v2/instance" and isinstance(doc.get("domain"), str) and "version" in doc:
        return _Identity(True, doc["domain"].lower(), "mastodon")
    if path == "/api/v1/instance" and isinstance(doc.get("uri"), str) and "version" in doc:
        uri = doc["uri"].lower().removeprefix("https://").removeprefix("http://").rstrip("/")
        return _Identity(True, uri, "mastodon")
    links = doc.get("links")
    if path == "/.well-known/nodeinfo" and isinstance(links, list):
        for link in links:
            if isinstance(link, dict) and str(link.get("rel", "")).startswith(NODEINFO_SCHEMA):
                return _Identity(True, None, "nodeinfo")
    return _Identity()


class _Exchange:
    """One h11 connection over one Stream; reusable while both sides keep it alive."""

    def __init__(self, stream: Stream, host: str) -> None:
        self.stream = stream
        self.host = host
        self.conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=32 * 1024)
        self.usable = True

    async def get(self, path: str, obs: HTTPObservation, settings: HTTPSettings) -> bytes:
        request = h11.Request(
            method="GET",
            target=path,
            headers=[
                ("Host", self.host),
                ("User-Agent", USER_AGENT),
                ("Accept", "application/json"),
                ("Accept-Encoding", "identity"),
            ],
        )
        await self.stream.send(
            self.conn.send(request) + (self.conn.send(h11.EndOfMessage()) or b"")
        )
        body = bytearray()
        eof = False
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError:
                if eof:  # closed mid-response: an EOF, not a malformed message
                    raise EOFError("connection closed mid-response") from None
                raise
            if event is h11.NEED_DATA:
                data = await self.stream.recv()
                eof = not data
                self.conn.receive_data(data)
                continue
            if isinstance(event, h11.Response):
                obs.status_code = event.status_code
                for name, value in event.headers:
                    key = name.decode("ascii", "replace").lower()
                    if key in KEPT_HEADERS:
                        obs.headers[key] = value.decode("latin-1")[:512]
            elif isinstance(event, h11.Data):
                room = settings.body_cap - len(body)
                body += event.data[:room]
                if len(event.data) > room:
                    obs.body_truncated = True
                    self.usable = False  # the rest of the body is still on the wire
                    return bytes(body)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                if isinstance(event, h11.ConnectionClosed) or self.conn.our_state is not h11.DONE:
                    self.usable = False
                else:
                    try:
                        self.conn.start_next_cycle()
                    except h11.LocalProtocolError:
                        self.usable = False
                return bytes(body)
            elif isinstance(event, h11.InformationalResponse):
                continue


async def fetch_instance_api(
    stream: Stream,
    *,
    scheme: str,
    domain: str,
    ip: str,
    port: int,
    settings: HTTPSettings,
    clock: Clock,
) -> list[HTTPObservation]:
    """GET the API paths in order over *stream* until one answers like an instance."""
    default_port = 443 if scheme == "https" else 80
    host = domain if port == default_port else f"{domain}:{port}"
    exchange = _Exchange(stream, host)
    observations: list[HTTPObservation] = []
    for path in API_PATHS:
        obs = HTTPObservation(
            t0=clock.elapsed(), t=0.0, url=f"{scheme}://{host}{path}", ip=ip, port=port
        )
        observations.append(obs)
        try:
            async with asyncio.timeout(settings.timeout):
                body = await exchange.get(path, obs, settings)
        except NETWORK_ERRORS as exc:
            obs.fail(classify(exc, Operation.HTTP_TRANSACTION))
            obs.t = clock.elapsed()
            break
        obs.t = clock.elapsed()
        obs.body_length = len(body)
        obs.body_sha256 = hashlib.sha256(body).hexdigest()
        found = identify(path, body) if obs.status_code == 200 else _Identity()
        obs.mastodon, obs.instance_domain, obs.software = (
            found.mastodon,
            found.instance_domain,
            found.software,
        )
        if obs.mastodon or not exchange.usable:
            break
    return observations
