"""The probe's side of the collector API (docs/api.md): enroll, check in, submit, rotate.

Where this sits in the data flow: the only module that talks to a collector.
The round hands it signed measurement envelopes, a batch at a time; it signs
the enrollment and the check-in itself (``envelope.sign``, ``signed_at`` = now) and parses what the
collector answers into small typed records.

Ways to the collector (``daemon.tactics``: the ``--collector`` URLs, then the
endpoints of the signed list the collector handed out, each direct, at another
address, through the operator's front or as a ``.onion``) are tried in order,
the one that answered last first: the first one that answers wins. A
connection error, a timeout or a 5xx moves on to the next one; any other answer
(success or a 4xx error) is final. Every attempt is kept in ``attempts`` for the
probe's statistics (``state.reach``). Every request is idempotent on the
collector's side (the same key enrolls to the same probe, a measurement id is
stored once), so trying the next URL after a lost answer is safe. Library
exceptions (aiohttp, ssl, OSError, timeouts) are translated here, at this one
boundary, into ``CollectorUnreachable`` or ``CollectorRefused``.

Every request to a collector goes through ``connect`` with one
``CollectorAccess`` (the URLs, the timeout, the CA bundle, the proxy): the round,
the final flush and key rotation alike, so that none of them reaches the
collector around ``--proxy``.

Privacy: the requests carry the signed documents and nothing else: no cookies,
no proxy or credentials from the environment, no redirect followed, and nothing
about this machine (the collector sees the connection's address, geolocates it
and forgets it). The check-in answer's ``seen_address`` (the address the
collector saw) is handed to the round for scrubbing and kept out of every
``repr`` and log line. Messages name a collector by its position in the list,
not by its address, and name failures by kind ("connection refused").
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import aiohttp
import dns.exception
import dns.message
import dns.rdatatype
from aiohttp_socks import ProxyConnector
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from probe_agent.daemon.tactics import NameMismatch, PinMismatch, Way, WayContext, way_context, ways
from probe_agent.measure.decoys import parse_pool
from probe_agent.measure.engine import SOFTWARE
from probe_agent.measure.http import USER_AGENT as BROWSER_USER_AGENT
from probe_agent.protocol.addresses import parse_address
from probe_agent.protocol.endpoints import Endpoint
from probe_agent.protocol.envelope import (
    Envelope,
    Purpose,
    b64encode,
    fingerprint,
    public_bytes,
    sign,
)
from probe_agent.protocol.errors import (
    CollectorRefused,
    CollectorUnreachable,
    InvalidDomainError,
    InvalidOptionError,
)
from probe_agent.protocol.inputs import DeclaredNetwork, is_port, normalize_domain
from probe_agent.protocol.messages import N_
from probe_agent.protocol.times import utc_now_rfc3339

API_PREFIX = "/api/v1"
MAX_BATCH = 100  # the collector takes up to 500; 100 keeps one lost answer cheap
GZIP_ABOVE = 1024  # bytes; smaller bodies do not shrink enough to pay for it
MAX_ANSWER_BYTES = 4 * 1024 * 1024
DEFAULT_TIMEOUT = 30.0
# A browser's, like the measurements' (measure.http): nothing in the probe's traffic
# names Blockwatch. The collector learns the version from the signed documents.
USER_AGENT = BROWSER_USER_AGENT
# Client-side code: the answer is not what docs/api.md says (an HTML page from a
# proxy, a success without the documented fields).
ERR_BAD_RESPONSE = "err_bad_response"
ITEM_STATUSES = ("accepted", "duplicate", "rejected")
DNS_MESSAGE = "application/dns-message"

log = logging.getLogger("blockwatch.probe.client")


@dataclass(frozen=True, slots=True)
class CheckIn:
    """The collector's answer to a check-in: what to measure and how often."""

    interval_seconds: float
    retest_spacing_seconds: float
    targets: list[str]
    network: dict[str, Any]
    server_time: str
    probe_id: str
    status: str
    invalid_targets: int = 0  # domains from the collector that are not valid names, skipped
    # Targets to measure at another port than --port: the collector's own names
    # where it is served on its own port (it measures itself like a target).
    ports: dict[str, int] = field(default_factory=dict)
    # The collector's signed endpoint list as it came (verified by state.reach), or None.
    endpoints: Any = field(default=None, repr=False)
    decoys: tuple[str, ...] = ()  # the operator's decoy pool; empty: the probe's default
    # The address the collector saw this request come from (the NAT's public
    # address, or the proxy's); None from a collector that does not send it.
    # Sensitive: for scrubbing only, never printed (repr=False).
    seen_address: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class ItemAnswer:
    """The collector's answer for one submitted envelope; ``index`` is its place in the call.

    Named apart from the collector's own record of an ingested item
    (``collector.services.ingest``)."""

    index: int
    measurement_id: str | None
    status: str  # "accepted" | "duplicate" | "rejected"
    error_code: str | None = None
    error_message: str | None = None

    @property
    def stored(self) -> bool:
        """Durably stored by the collector (docs/api.md): it may leave the spool."""
        return self.status in ("accepted", "duplicate")


class _NoAnswer(Exception):
    """One URL gave no answer (refused, timeout, TLS, broken connection)."""


def _describe(exc: BaseException) -> str:
    """A failure by kind; aiohttp's own messages carry the collector's address and port."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        if isinstance(exc.certificate_error, PinMismatch):
            return "TLS certificate key not the pinned one"
        if isinstance(exc.certificate_error, NameMismatch):
            return "TLS certificate of the front not valid for the collector"
        return "TLS certificate not trusted"
    if isinstance(exc, aiohttp.ClientSSLError):
        return "TLS handshake failed"
    if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error, socket.gaierror):
        return "cannot resolve the collector's name"
    if isinstance(exc, OSError) and exc.errno and exc.errno > 0:
        # By errno: asyncio's strerror reads "Connect call failed ('203.0.113.9', 443)".
        return os.strerror(exc.errno).lower()
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "connection closed before the answer"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "answer cut short"
    return type(exc).__name__


def _error_from(status: int, data: Any) -> CollectorRefused:
    """``{"error": {"code", "message"}}`` as a CollectorRefused (or err_bad_response)."""
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        code, message = error.get("code"), error.get("message")
        if isinstance(code, str) and code:
            return CollectorRefused(status, code, message if isinstance(message, str) else "")
    return CollectorRefused(status, ERR_BAD_RESPONSE, f"HTTP {status} without an error body")


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: rare from an API; the caller picks its own delay


def _field(data: dict[str, Any], name: str, kind: type, status: int) -> Any:
    value = data.get(name)
    if not isinstance(value, kind):
        raise CollectorRefused(status, ERR_BAD_RESPONSE, f"the answer lacks a valid {name!r}")
    return value


def _seconds(data: dict[str, Any], name: str, status: int) -> float:
    """A positive duration; ``300`` or ``300.0`` (a JSON number is a JSON number)."""
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e9:
        raise CollectorRefused(status, ERR_BAD_RESPONSE, f"the answer lacks a valid {name!r}")
    return float(value)


def _seen_address(data: dict[str, Any]) -> str | None:
    """The optional ``seen_address``; a value that is no address is ignored, not an error:
    the check-in's schedule and targets are still good, and the interface addresses
    are scrubbed anyway."""
    value = data.get("seen_address")
    if not isinstance(value, str):
        return None
    try:
        return str(parse_address(value))
    except ValueError:
        log.debug("the check-in answer's seen_address is not an address: ignored")
        return None


def _decoys(data: dict[str, Any]) -> tuple[str, ...]:
    """The optional ``decoys``: valid names only (a bad one is skipped, not an error)."""
    value = data.get("decoys")
    if not isinstance(value, list):
        return ()
    return parse_pool(n for n in value if isinstance(n, str))


def _parse_checkin(status: int, data: dict[str, Any]) -> CheckIn:
    targets: dict[str, None] = {}  # ordered and unique
    ports: dict[str, int] = {}
    invalid = 0
    for item in _field(data, "targets", list, status):
        domain = item.get("domain") if isinstance(item, dict) else None
        try:
            name = normalize_domain(domain if isinstance(domain, str) else "")
        except InvalidDomainError:
            invalid += 1
            continue
        port = item.get("port")
        if port is not None:
            if not is_port(port):
                invalid += 1
                continue
            ports[name] = port
        targets[name] = None
    return CheckIn(
        interval_seconds=_seconds(data, "interval_seconds", status),
        retest_spacing_seconds=_seconds(data, "retest_spacing_seconds", status),
        targets=list(targets),
        network=_field(data, "network", dict, status),
        server_time=_field(data, "server_time", str, status),
        probe_id=_field(data, "probe_id", str, status),
        status=_field(data, "status", str, status),
        invalid_targets=invalid,
        ports=ports,
        seen_address=_seen_address(data),
        endpoints=data.get("endpoints"),
        decoys=_decoys(data),
    )


def _parse_results(status: int, data: dict[str, Any], count: int, offset: int) -> list[ItemAnswer]:
    """One result per submitted item, mapped by its ``index`` within the batch."""
    items = _field(data, "results", list, status)
    by_index: dict[int, ItemAnswer] = {}
    for item in items:
        if not isinstance(item, dict):
            raise CollectorRefused(status, ERR_BAD_RESPONSE, "a result is not an object")
        index, state, mid = item.get("index"), item.get("status"), item.get("measurement_id")
        if type(index) is not int or not 0 <= index < count or index in by_index:
            raise CollectorRefused(status, ERR_BAD_RESPONSE, "a result has a bad index")
        if state not in ITEM_STATUSES:
            raise CollectorRefused(status, ERR_BAD_RESPONSE, f"a result has status {state!r}")
        code = message = None
        if state == "rejected":
            error = _error_from(status, item)
            code, message = error.code, error.message
        by_index[index] = ItemAnswer(
            offset + index, mid if isinstance(mid, str) else None, state, code, message
        )
    if len(by_index) != count:
        raise CollectorRefused(status, ERR_BAD_RESPONSE, f"{len(by_index)} results for {count}")
    return [by_index[i] for i in range(count)]


def ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """The system's trust store, plus *ca_file* (a lab or a private collector CA)."""
    return way_context(ca_file, None, None)


@dataclass(frozen=True, slots=True)
class CollectorAccess:
    """How this probe reaches its collectors: parsed base URLs, tried in order, and how."""

    urls: tuple[str, ...]
    timeout: float = DEFAULT_TIMEOUT
    ca_file: str | None = None
    # socks5://, socks4://, http://: every request to a collector goes through it.
    proxy: str | None = None
    # The collector's signed list (verified: state.reach), tried after the URLs.
    endpoints: tuple[Endpoint, ...] = ()
    pin: str | None = None  # --collector-pin: base64 SHA-256 of the certificate's key
    preferred: str | None = None  # the way (Way.key) that answered last: tried first
    doh: str | None = None  # --collector-doh: a DNS-over-HTTPS server for the collector's name

    @property
    def via_proxy(self) -> bool:
        return self.proxy is not None


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try of one way: for the statistics, never printed with its URL."""

    way: Way
    ok: bool
    failure: str | None = None


def connect(access: CollectorAccess, key: Ed25519PrivateKey) -> CollectorClient:
    """The client for every request to a collector (``async with connect(...) as client``)."""
    return CollectorClient(
        access.urls,
        key,
        timeout=access.timeout,
        ca_file=access.ca_file,
        proxy=access.proxy,
        endpoints=access.endpoints,
        pin=access.pin,
        preferred=access.preferred,
        doh=access.doh,
    )


class CollectorClient:
    """An async context manager over one aiohttp session; *urls* are parsed base URLs.

    Build it with ``connect``, which passes every way of reaching the collector.
    """

    def __init__(
        self,
        urls: Sequence[str],
        key: Ed25519PrivateKey,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        ca_file: str | None = None,
        now: Callable[[], str] = utc_now_rfc3339,
        proxy: str | None = None,
        endpoints: Sequence[Endpoint] = (),
        pin: str | None = None,
        preferred: str | None = None,
        doh: str | None = None,
    ) -> None:
        if not urls:
            raise InvalidOptionError("no collector URL")
        socks = proxy is not None and proxy.startswith("socks")
        # Through a proxy the proxy resolves names: DoH would only add a request.
        self._doh = doh if proxy is None else None
        self._ways = ways(
            tuple(urls),
            tuple(endpoints),
            socks_proxy=socks,
            preferred=preferred,
            doh=self._doh is not None,
        )
        self._key = key
        self.key_id = fingerprint(public_bytes(key))
        self._timeout = timeout
        self._ca_file = ca_file
        self._pin = pin
        self._ssl = way_context(ca_file, pin, None)
        self._fronted: dict[str, WayContext] = {}
        self._doh_ssl: WayContext | None = None  # made when first needed (_resolve)
        self._now = now
        self._proxy = proxy
        self._session: aiohttp.ClientSession | None = None
        self._preferred = 0
        self.answered_by: str | None = None  # the base URL that gave the last answer
        self.answered_way: Way | None = None
        self.attempts: list[Attempt] = []

    async def __aenter__(self) -> Self:
        # One connection per request: a round's few requests are minutes apart
        # (measuring in between), and a kept-alive connection the collector
        # closed meanwhile would fail the next POST for nothing.
        connector: aiohttp.BaseConnector
        if self._proxy:
            # rdns: the proxy resolves the collector's name, so no DNS query for it
            # leaves this machine (over Tor, the exit resolves it).
            connector = ProxyConnector.from_url(
                self._proxy, rdns=True, ssl=self._ssl, force_close=True
            )
        else:
            connector = aiohttp.TCPConnector(ssl=self._ssl, force_close=True)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            headers={"User-Agent": USER_AGENT},
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # -- the API ---------------------------------------------------------------

    async def enroll(
        self,
        token: str | None,
        role: str = "probe",
        declared: DeclaredNetwork | None = None,
        region: str | None = None,
    ) -> dict[str, Any]:
        """``POST /probes/enroll``: ``{"probe_id", "key_id", "status", "role"}``."""
        document: dict[str, Any] = {"public_key": b64encode(public_bytes(self._key))}
        if token is not None:
            document["token"] = token
        document |= {
            "role": role,
            "declared": declared.to_json() if declared else None,
            "software": dict(SOFTWARE),
            "signed_at": self._now(),
        } | ({"region": region} if region is not None else {})
        status, data = await self._post_envelope("/probes/enroll", Purpose.ENROLL, document)
        for name in ("probe_id", "status"):
            _field(data, name, str, status)
        if data.get("key_id", self.key_id) != self.key_id:
            raise CollectorRefused(status, ERR_BAD_RESPONSE, "the answer names another key")
        return data

    async def checkin(
        self,
        declared: DeclaredNetwork | None,
        via_proxy: bool = False,
        spool_depth: int = 0,
        evicted: int = 0,
        public_evidence: bool = False,
        region: str | None = None,
    ) -> CheckIn:
        """``POST /probes/checkin``: the targets to measure and the schedule.

        *public_evidence*: the volunteer lets this probe's signed measurements be
        published in evidence bundles (``run --public-evidence``).
        """
        document = {
            "signed_at": self._now(),
            "software": dict(SOFTWARE),
            "declared": declared.to_json() if declared else None,
            "via_proxy": via_proxy,
            "public_evidence": public_evidence,
            "spool": {"depth": spool_depth, "evicted": evicted},
        } | ({"region": region} if region is not None else {})
        status, data = await self._post_envelope("/probes/checkin", Purpose.CHECKIN, document)
        return _parse_checkin(status, data)

    async def rotate(self, new_key: Ed25519PrivateKey) -> dict[str, Any]:
        """``POST /probes/rotate``: retire this client's key for *new_key*.

        Signed with the current key; *new_key* agrees by signing the current key
        id (docs/api.md). Answer: ``{"probe_id", "key_id": <new>, "status"}``.
        """
        new_key_id = fingerprint(public_bytes(new_key))
        proof = new_key.sign(Purpose.ROTATE.prefix + self.key_id.encode("ascii"))
        document = {
            "signed_at": self._now(),
            "new_public_key": b64encode(public_bytes(new_key)),
            "new_key_signature": b64encode(proof),
        }
        status, data = await self._post_envelope("/probes/rotate", Purpose.ROTATE, document)
        for name in ("probe_id", "status"):
            _field(data, name, str, status)
        if data.get("key_id") != new_key_id:
            raise CollectorRefused(status, ERR_BAD_RESPONSE, "the answer names another key")
        return data

    async def submit(self, envelopes: Sequence[Envelope]) -> list[ItemAnswer]:
        """``POST /measurements`` of one batch (at most ``MAX_BATCH``); one result per envelope.

        The caller makes the batches (the round: read from the spool, submit,
        acknowledge); a collector refusing the body as too large (413) gets it
        in halves, so that one lower limit of its own costs a few requests, not a round.
        """
        if len(envelopes) > MAX_BATCH:
            raise ValueError(f"a batch holds at most {MAX_BATCH} measurements")
        return await self._submit_batch(envelopes, 0)

    async def _submit_batch(self, batch: Sequence[Envelope], offset: int) -> list[ItemAnswer]:
        body = json.dumps(
            {"measurements": [e.to_json() for e in batch]}, separators=(",", ":")
        ).encode()
        try:
            status, data = await self._post("/measurements", body, may_compress=True)
        except CollectorRefused as exc:
            if exc.status != 413:
                raise
            if len(batch) == 1:  # one measurement over the body limit: never storable
                return [ItemAnswer(offset, None, "rejected", exc.code, exc.message)]
            # A collector with a lower batch or body limit: halve until it fits.
            half = len(batch) // 2
            first = await self._submit_batch(batch[:half], offset)
            return first + await self._submit_batch(batch[half:], offset + half)
        return _parse_results(status, data, len(batch), offset)

    # -- transport -------------------------------------------------------------

    async def _post_envelope(
        self, path: str, purpose: Purpose, document: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        envelope = sign(self._key, purpose, document)
        body = json.dumps(envelope.to_json(), separators=(",", ":")).encode()
        return await self._post(path, body)

    def _order(self) -> list[int]:
        """The way that answered last first (within this session), then the others in order."""
        rest = [i for i in range(len(self._ways)) if i != self._preferred]
        return [self._preferred, *rest]

    def _context(self, way: Way) -> WayContext:
        if way.endpoint.sni is None:
            return self._ssl
        if way.host not in self._fronted:
            self._fronted[way.host] = way_context(self._ca_file, self._pin, way.host)
        return self._fronted[way.host]

    async def _post(
        self, path: str, body: bytes, *, may_compress: bool = False
    ) -> tuple[int, dict[str, Any]]:
        """POST *body* to the first URL that answers; a 2xx JSON object, or raise.

        Only ``/measurements`` takes ``Content-Encoding: gzip`` (docs/api.md).
        """
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if may_compress and len(body) > GZIP_ABOVE:
            body = gzip.compress(body, compresslevel=6, mtime=0)
            headers["Content-Encoding"] = "gzip"
        failures: list[str] = []
        server_error: CollectorRefused | None = None
        for i in self._order():
            way = self._ways[i]
            try:
                status, data, retry_after = await self._attempt(way, path, body, headers)
            except _NoAnswer as exc:
                failures.append(f"{way.label}: {exc}")
                self.attempts.append(Attempt(way, False, str(exc)))
                continue
            if status >= 500:
                server_error = _error_from(status, data)
                server_error.retry_after = retry_after
                failures.append(f"{way.label}: HTTP {status}")
                self.attempts.append(Attempt(way, False, f"HTTP {status}"))
                continue
            self.attempts.append(Attempt(way, True))
            self._preferred, self.answered_by, self.answered_way = i, way.endpoint.url, way
            if not 200 <= status < 300:
                error = _error_from(status, data)
                error.retry_after = retry_after
                raise error
            if not isinstance(data, dict):
                raise CollectorRefused(status, ERR_BAD_RESPONSE, "the answer is not a JSON object")
            return status, data
        log.debug("no collector answered %s: %s", path, "; ".join(failures))
        if server_error is not None:
            raise server_error
        raise CollectorUnreachable(
            N_("no collector answered (%(failures)s)"), failures="; ".join(failures)
        )

    async def _resolve(self, host: str) -> str:
        """*host*'s first address from the DoH server (RFC 8484, POST), A then AAAA."""
        if self._session is None or self._doh is None:
            raise RuntimeError("use CollectorClient as an async context manager")
        if self._doh_ssl is None:
            # The DoH server is not the collector: the collector's pin is not its key.
            self._doh_ssl = way_context(self._ca_file, None, None)
        for qtype in ("A", "AAAA"):
            query = dns.message.make_query(host, qtype)
            query.id = 0  # RFC 8484 4.1: cache-friendly, the transport is TLS anyway
            try:
                async with self._session.post(
                    self._doh,
                    data=query.to_wire(),
                    headers={"Content-Type": DNS_MESSAGE, "Accept": DNS_MESSAGE},
                    allow_redirects=False,
                    ssl=self._doh_ssl,
                ) as response:
                    wire = await response.content.read(64 * 1024)
                    status = response.status
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                raise _NoAnswer(f"DNS-over-HTTPS: {_describe(exc)}") from exc
            if status != 200:
                raise _NoAnswer(f"DNS-over-HTTPS: HTTP {status}")
            try:
                answer = dns.message.from_wire(wire)
            except dns.exception.DNSException as exc:
                raise _NoAnswer("DNS-over-HTTPS: not a DNS answer") from exc
            for rrset in answer.answer:
                for item in rrset:
                    if item.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                        return str(item.address)
        raise _NoAnswer("DNS-over-HTTPS: no address for the collector's name")

    async def _attempt(
        self, way: Way, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, Any, float | None]:
        if self._session is None:
            raise RuntimeError("use CollectorClient as an async context manager")
        if way.doh:
            way = way.at(await self._resolve(way.host))
        base, extra = way.request()
        headers = headers | extra.pop("headers", {})
        ssl_arg = self._context(way) if base.startswith("https://") else False
        try:
            async with self._session.post(
                base + API_PREFIX + path,
                data=body,
                headers=headers,
                allow_redirects=False,
                ssl=ssl_arg,
                **extra,
            ) as response:
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.content.iter_any():
                    size += len(chunk)
                    if size > MAX_ANSWER_BYTES:
                        raise _NoAnswer("answer too large")
                    chunks.append(chunk)
                status, retry_after = response.status, _retry_after(response.headers)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _NoAnswer(_describe(exc)) from exc
        try:
            data = json.loads(b"".join(chunks))
        except (ValueError, UnicodeDecodeError):
            data = None
        return status, data, retry_after
