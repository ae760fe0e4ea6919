"""A fake collector on 127.0.0.1: docs/api.md's probe endpoints, strict about every byte.

Where this sits in the data flow: it stands in for the collector at the end of
the probe's pipeline (enroll, check-in, submit) in the client and runner tests.
It does what docs/api.md says the collector does, and no more:

- every envelope is checked with ``Envelope.from_json`` and verified with
  ``probe_agent.protocol.envelope.verify`` for its purpose *before* its payload is
  trusted, so that a signing bug in the probe fails the test;
- every signed document must have exactly the documented keys (nothing extra:
  a probe that added its own address anywhere would fail), the right types and a
  ``signed_at`` inside the window (300 s ahead, 8 days back);
- ``Content-Encoding: gzip`` bodies are decoded here (the server's automatic
  decompression is off), anything else is ``err_bad_encoding``;
- request headers must be in a small allow-list (no cookies, no forwarding
  headers): anything else lands in ``problems``, which tests assert empty.

``POST /probes/rotate`` verifies both signatures (the old key's over the
document, the new key's over the rotate prefix + the old key id); the old key
is then retired: refused for anything but measurements signed before.

Answers and error codes are those of docs/api.md. ``script`` queues canned
answers (a 503, a 429, an HTML page) for a path; ``stall`` makes it hang;
``tls=pki.loopback_context()`` serves it over HTTPS.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import ssl
import zlib
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Self

from aiohttp import web

from probe_agent.measure.http import USER_AGENT as BROWSER_USER_AGENT
from probe_agent.protocol.envelope import (
    Envelope,
    EnvelopeError,
    Purpose,
    b64decode,
    fingerprint,
    verify,
)
from probe_agent.protocol.errors import InvalidDomainError
from probe_agent.protocol.inputs import normalize_domain
from tests.support.aiohttp_site import serve_app

MAX_FUTURE_SKEW = timedelta(seconds=300)
MAX_AGE = timedelta(days=8)
RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
ALLOWED_HEADERS = {
    "host",
    "user-agent",
    "content-type",
    "content-length",
    "content-encoding",
    "accept",
    "accept-encoding",
    "connection",
}
ENROLL_KEYS = {"public_key", "role", "declared", "software", "signed_at"}
CHECKIN_KEYS = {"signed_at", "software", "declared", "via_proxy", "public_evidence", "spool"}
MEASUREMENT_KEYS = {"measurement", "signed_at", "declared", "via_proxy"}
ROTATE_KEYS = {"signed_at", "new_public_key", "new_key_signature"}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str = "") -> None:
        super().__init__(message or code)
        self.status, self.code, self.message = status, code, message or code


@dataclass(slots=True)
class FakeProbe:
    probe_id: str
    public_key: bytes
    status: str
    role: str
    declared: dict[str, Any] | None


@dataclass(slots=True)
class Received:
    """One request as it arrived: path, encoding, compressed and decoded sizes, batch size."""

    path: str
    content_encoding: str | None
    wire_bytes: int
    body_bytes: int
    items: int = 0


@dataclass(slots=True)
class Canned:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def error_body(code: str, message: str = "") -> bytes:
    return json.dumps({"error": {"code": code, "message": message or code}}).encode()


def _json(status: int, doc: Any) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(doc).encode(), content_type="application/json"
    )


def _check_signed_at(value: Any) -> None:
    if not isinstance(value, str) or not RFC3339_UTC.match(value):
        raise ApiError(422, "err_malformed_payload", "signed_at is not RFC 3339 UTC")
    signed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    now = datetime.now(UTC)
    if signed > now + MAX_FUTURE_SKEW or signed < now - MAX_AGE:
        raise ApiError(422, "err_timestamp_out_of_window")


def _check_region(document: dict[str, Any]) -> None:
    """``region`` is optional (run --region), and then an ISO 3166-2 code's shape."""
    if "region" in document and not (
        isinstance(document["region"], str)
        and re.fullmatch(r"[A-Za-z]{2}-[A-Za-z0-9]{1,3}", document["region"])
    ):
        raise ApiError(422, "err_malformed_payload", "region")


def _check_declared(value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, dict) or set(value) != {"cc", "asn"}:
        raise ApiError(422, "err_malformed_payload", "declared is {cc, asn} or null")
    cc, asn = value["cc"], value["asn"]
    if not (isinstance(cc, str) and re.fullmatch(r"[A-Z]{2}", cc)):
        raise ApiError(422, "err_malformed_payload", "declared.cc")
    if not isinstance(asn, int) or isinstance(asn, bool) or not 0 < asn < 2**32 - 1:
        raise ApiError(422, "err_malformed_payload", "declared.asn")


def _check_software(value: Any) -> None:
    if not (
        isinstance(value, dict)
        and set(value) == {"name", "version"}
        and value["name"] == "blockwatch-probe"
        and isinstance(value["version"], str)
    ):
        raise ApiError(422, "err_malformed_payload", "software")


class FakeCollector:
    """An aiohttp server on 127.0.0.1; an async context manager."""

    def __init__(
        self,
        *,
        targets: list[str] | None = None,
        open_enrollment: bool = True,
        tokens: set[str] | None = None,
        max_batch: int = 500,
        max_body: int = 16 * 1024 * 1024,
        tls: ssl.SSLContext | None = None,
        seen_address: str | None = None,
        decoys: list[str] | None = None,
        collector_key_id: str | None = None,
    ) -> None:
        self.targets = list(targets or [])
        # The enrollment answer's collector_key_id (None leaves it out), and the signed
        # endpoint list every check-in answer carries (None: none).
        self.collector_key_id = collector_key_id
        self.endpoints: dict[str, Any] | None = None
        self.decoys = list(decoys or [])  # the check-in's decoy pool (left out when empty)
        self.open_enrollment = open_enrollment
        self.tokens = set(tokens or ())
        self.max_batch = max_batch
        self.max_body = max_body
        self.tls = tls
        # Answered as the check-in's seen_address (docs/api.md); None leaves it out,
        # as a collector older than the field does.
        self.seen_address = seen_address
        self.probes: dict[str, FakeProbe] = {}  # by key id
        self.stored: dict[str, dict[str, Any]] = {}  # measurement id -> verified document
        self.stored_by: dict[str, str] = {}  # measurement id -> key id
        self.checkins: list[dict[str, Any]] = []
        self.enrollments: list[dict[str, Any]] = []
        self.received: list[Received] = []
        self.problems: list[str] = []
        self.canned: dict[str, deque[Canned]] = defaultdict(deque)
        self.stall = False
        self.reject_with: str | None = None  # reject every measurement with this code
        self.envelopes: dict[str, dict[str, Any]] = {}  # measurement id -> envelope as received
        self.rotations: list[dict[str, Any]] = []  # verified rotation documents
        self.retired: dict[str, datetime] = {}  # old key id -> when it was rotated away
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def script(self, path: str, status: int, body: bytes | None = None, **kwargs: Any) -> None:
        """Answer the next request to ``/api/v1<path>`` with this, whatever it holds."""
        code = "err_internal" if status >= 500 else "err_rate_limited"
        self.canned[path].append(
            Canned(status, body if body is not None else error_body(code), **kwargs)
        )

    def measurements_by(self, key_id: str) -> list[dict[str, Any]]:
        return [self.stored[mid] for mid, kid in self.stored_by.items() if kid == key_id]

    async def start(self) -> None:
        # The limit is on the decoded body (below); the wire limit only stops a runaway.
        app = web.Application(client_max_size=self.max_body + 64 * 1024 * 1024)
        app.router.add_post("/api/v1/probes/enroll", self._wrap("/probes/enroll", self._enroll))
        app.router.add_post("/api/v1/probes/checkin", self._wrap("/probes/checkin", self._checkin))
        app.router.add_post("/api/v1/probes/rotate", self._wrap("/probes/rotate", self._rotate))
        app.router.add_post("/api/v1/measurements", self._wrap("/measurements", self._measurements))
        # auto_decompress off: the gzip body is decoded (and checked) by this code.
        self._runner, self.port = await serve_app(
            app, ssl_context=self.tls, auto_decompress=False, access_log=None
        )

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- plumbing -----------------------------------------------------------------

    def _wrap(
        self, path: str, handler: Callable[[Any], Awaitable[web.Response]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            self._check_headers(request)
            if self.stall:
                await self._release.wait()
            if self.canned[path]:
                canned = self.canned[path].popleft()
                await request.read()
                return web.Response(
                    status=canned.status,
                    body=canned.body,
                    content_type=canned.content_type,
                    headers=canned.headers,
                )
            try:
                body = await self._body(request, path)
                return await handler(body)
            except ApiError as exc:
                return web.Response(
                    status=exc.status,
                    body=error_body(exc.code, exc.message),
                    content_type="application/json",
                )

        return handle

    def _check_headers(self, request: web.Request) -> None:
        for name in request.headers:
            if name.lower() not in ALLOWED_HEADERS:
                self.problems.append(f"unexpected header {name}")
        if request.headers.get("User-Agent") != BROWSER_USER_AGENT:
            self.problems.append("User-Agent is not the browser's one (nothing names Blockwatch)")
        if request.content_type != "application/json":
            self.problems.append(f"Content-Type {request.content_type}")

    async def _body(self, request: web.Request, path: str) -> Any:
        raw = await request.read()
        encoding = request.headers.get("Content-Encoding")
        if encoding is None:
            body = raw
        elif encoding == "gzip":
            try:
                body = gzip.decompress(raw)
            except (OSError, EOFError, zlib.error) as exc:
                raise ApiError(400, "err_bad_encoding", "corrupt gzip") from exc
        else:
            raise ApiError(400, "err_bad_encoding", f"unsupported {encoding}")
        self.received.append(Received(path, encoding, len(raw), len(body)))
        if len(body) > self.max_body:
            raise ApiError(413, "err_body_too_large")
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, "err_malformed_json") from exc

    def _verified(self, data: Any, purpose: Purpose) -> tuple[FakeProbe, dict[str, Any]]:
        """An envelope of a known key, verified for *purpose*; its payload as a JSON object."""
        try:
            envelope = Envelope.from_json(data)
            probe = self.probes.get(envelope.key_id)
            if probe is None:
                raise ApiError(401, "err_unknown_key")
            verify(envelope, purpose, probe.public_key)
            document = envelope.payload_json()
        except EnvelopeError as exc:
            status = 401 if exc.code == "err_bad_signature" else 400
            raise ApiError(
                422 if exc.code == "err_malformed_payload" else status, exc.code
            ) from exc
        if probe.status == "revoked":
            raise ApiError(403, "err_revoked_key")
        if not isinstance(document, dict):
            raise ApiError(422, "err_malformed_payload", "not a JSON object")
        _check_signed_at(document.get("signed_at"))
        retired_at = self.retired.get(envelope.key_id)
        if retired_at is not None and (
            # A retired key's measurements signed before the rotation stay valid (docs/api.md).
            purpose is not Purpose.MEASUREMENT
            or datetime.fromisoformat(document["signed_at"].replace("Z", "+00:00")) >= retired_at
        ):
            raise ApiError(403, "err_revoked_key")
        return probe, document

    # -- the API ------------------------------------------------------------------

    async def _enroll(self, data: Any) -> web.Response:
        try:
            envelope = Envelope.from_json(data)
            document = envelope.payload_json()
            if not isinstance(document, dict) or not isinstance(document.get("public_key"), str):
                raise ApiError(422, "err_malformed_payload", "public_key")
            public_key = b64decode(document["public_key"], "public_key")
            if len(public_key) != 32 or fingerprint(public_key) != envelope.key_id:
                raise ApiError(401, "err_bad_signature", "key id and public key differ")
            verify(envelope, Purpose.ENROLL, public_key)
        except EnvelopeError as exc:
            raise ApiError(401 if exc.code == "err_bad_signature" else 400, exc.code) from exc
        keys = set(document)
        if keys - {"token", "region"} != ENROLL_KEYS:
            raise ApiError(422, "err_malformed_payload", f"enroll keys {sorted(keys)}")
        _check_signed_at(document["signed_at"])
        _check_declared(document["declared"])
        _check_region(document)
        _check_software(document["software"])
        if document["role"] not in ("probe", "control"):
            raise ApiError(422, "err_validation", "role")
        self.enrollments.append(document)
        known = self.probes.get(envelope.key_id)
        if known is not None:
            return _json(200, self._probe_json(known, envelope.key_id))
        token = document.get("token")
        if token is not None and (not isinstance(token, str) or token not in self.tokens):
            raise ApiError(401, "err_invalid_token")
        if token is not None:
            self.tokens.discard(token)
        status = "active" if token is not None or self.open_enrollment else "pending"
        probe = FakeProbe(
            f"p_{len(self.probes) + 1:04d}",
            public_key,
            status,
            document["role"],
            document["declared"],
        )
        self.probes[envelope.key_id] = probe
        return _json(201, self._probe_json(probe, envelope.key_id))

    def _probe_json(self, probe: FakeProbe, key_id: str) -> dict[str, Any]:
        answer = {
            "probe_id": probe.probe_id,
            "key_id": key_id,
            "status": probe.status,
            "role": probe.role,
        }
        if self.collector_key_id is not None:
            answer["collector_key_id"] = self.collector_key_id
        return answer

    async def _checkin(self, data: Any) -> web.Response:
        probe, document = self._verified(data, Purpose.CHECKIN)
        if set(document) - {"region"} != CHECKIN_KEYS:
            raise ApiError(422, "err_malformed_payload", f"checkin keys {sorted(document)}")
        _check_declared(document["declared"])
        _check_region(document)
        _check_software(document["software"])
        spool = document["spool"]
        if not isinstance(document["via_proxy"], bool) or not isinstance(
            document["public_evidence"], bool
        ):
            raise ApiError(422, "err_malformed_payload", "via_proxy or public_evidence")
        if not (
            isinstance(spool, dict)
            and set(spool) == {"depth", "evicted"}
            and all(isinstance(v, int) and v >= 0 for v in spool.values())
        ):
            raise ApiError(422, "err_malformed_payload", "via_proxy or spool")
        if probe.status == "pending":
            raise ApiError(403, "err_probe_pending")
        self.checkins.append(document)
        declared = document["declared"]
        network = (
            {**declared, "source": "declared"}
            if declared
            else {"cc": None, "asn": None, "source": "unknown"}
        )
        now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        answer = {
            "probe_id": probe.probe_id,
            "status": probe.status,
            "server_time": now,
            "interval_seconds": 300,
            "retest_spacing_seconds": 180,
            "network": network,
            "targets": [{"domain": d, "group": None, "kind": "primary"} for d in self.targets],
            **({"decoys": self.decoys} if self.decoys else {}),
        }
        if self.seen_address is not None:
            answer["seen_address"] = self.seen_address
        if self.endpoints is not None:
            answer["endpoints"] = self.endpoints
        return _json(200, answer)

    async def _rotate(self, data: Any) -> web.Response:
        """docs/api.md: signed by the old key; the new key signs the prefix + the old key id."""
        probe, document = self._verified(data, Purpose.ROTATE)
        if set(document) != ROTATE_KEYS:
            raise ApiError(422, "err_malformed_payload", f"rotate keys {sorted(document)}")
        new_public, new_signature = document["new_public_key"], document["new_key_signature"]
        if not isinstance(new_public, str) or not isinstance(new_signature, str):
            raise ApiError(422, "err_malformed_payload", "new_public_key, new_key_signature")
        old_key_id = Envelope.from_json(data).key_id
        try:
            public_key = b64decode(new_public, "new_public_key")
            if len(public_key) != 32:
                raise ApiError(422, "err_malformed_payload", "new_public_key is 32 bytes")
            proof = Envelope(
                fingerprint(public_key),
                old_key_id.encode("ascii"),
                b64decode(new_signature, "new_key_signature"),
            )
            verify(proof, Purpose.ROTATE, public_key)
        except EnvelopeError as exc:
            raise ApiError(401 if exc.code == "err_bad_signature" else 400, exc.code) from exc
        if proof.key_id in self.probes:
            raise ApiError(409, "err_conflict", "that key is already enrolled")
        self.rotations.append(document)
        self.retired[old_key_id] = datetime.now(UTC)
        self.probes[proof.key_id] = FakeProbe(
            probe.probe_id, public_key, probe.status, probe.role, probe.declared
        )
        return _json(
            200, {"probe_id": probe.probe_id, "key_id": proof.key_id, "status": probe.status}
        )

    async def _measurements(self, data: Any) -> web.Response:
        items = data.get("measurements") if isinstance(data, dict) else None
        if not isinstance(items, list) or set(data) != {"measurements"}:
            raise ApiError(422, "err_validation", "expected {measurements: [...]}")
        if len(items) > self.max_batch:
            raise ApiError(413, "err_batch_too_large")
        self.received[-1].items = len(items)
        results = [self._one_measurement(i, item) for i, item in enumerate(items)]
        counts = {
            s: sum(r["status"] == s for r in results) for s in ("accepted", "duplicate", "rejected")
        }
        return _json(
            200,
            {
                "results": results,
                "accepted": counts["accepted"],
                "duplicates": counts["duplicate"],
                "rejected": counts["rejected"],
            },
        )

    def _one_measurement(self, index: int, item: Any) -> dict[str, Any]:
        try:
            probe, document = self._verified(item, Purpose.MEASUREMENT)
            if probe.status != "active":
                raise ApiError(403, "err_probe_pending")
            if set(document) - {"region"} != MEASUREMENT_KEYS:
                raise ApiError(422, "err_malformed_payload", f"keys {sorted(document)}")
            _check_declared(document["declared"])
            _check_region(document)
            measurement = document["measurement"]
            if not isinstance(document["via_proxy"], bool) or not isinstance(measurement, dict):
                raise ApiError(422, "err_malformed_payload", "measurement or via_proxy")
            mid = measurement.get("measurement_id")
            if not isinstance(mid, str) or not mid:
                raise ApiError(422, "err_malformed_payload", "measurement_id")
            if self.reject_with is not None:
                raise ApiError(422, self.reject_with)
            try:
                normalize_domain(str(measurement.get("domain")))
            except InvalidDomainError as exc:
                raise ApiError(422, "err_invalid_domain") from exc
        except ApiError as exc:
            error = {"code": exc.code, "message": exc.message}
            return {"index": index, "measurement_id": None, "status": "rejected", "error": error}
        if mid in self.stored:
            return {"index": index, "measurement_id": mid, "status": "duplicate"}
        self.stored[mid] = document
        self.stored_by[mid] = Envelope.from_json(item).key_id
        self.envelopes[mid] = item
        return {"index": index, "measurement_id": mid, "status": "accepted"}
