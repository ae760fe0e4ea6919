"""Measurement submission: a batch of signed envelopes, one answer per item.

The body is read here (not by FastAPI's parser) so that gzip bodies are
decompressed under the same size limit, and the limits apply before any JSON is
parsed; the OpenAPI document still describes it (``BatchIn``).
"""

from __future__ import annotations

import json
import time
import zlib
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import anyio.to_thread
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from collector.api.deps import ClockDep, NetworkOfDep, PublicationDep, SessionDep, SettingsDep
from collector.api.schemas import BatchIn, BatchOut
from collector.core import metrics
from collector.core.errors import BadRequest, TooLarge, Unprocessable
from collector.services.exports import Filters, page
from collector.services.ingest import IngestService

router = APIRouter(tags=["measurements"])
# BatchIn's schema, its EnvelopeIn pointing at the component the other routes declare.
_BATCH_SCHEMA = BatchIn.model_json_schema(ref_template="#/components/schemas/{model}")
_BATCH_SCHEMA.pop("$defs", None)


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    if encoding in ("", "identity"):
        return body
    if encoding != "gzip":
        raise BadRequest(f"unsupported Content-Encoding {encoding!r}", "err_bad_encoding")
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadRequest("corrupt gzip body", "err_bad_encoding") from exc
    if len(data) > limit or inflater.unconsumed_tail:
        raise TooLarge("the decompressed body is over the limit", "err_body_too_large")
    if not inflater.eof:
        raise BadRequest("truncated gzip body", "err_bad_encoding")
    return data


def _items(data: bytes, max_items: int) -> list[Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest("the body is not valid JSON", "err_malformed_json") from exc
    except RecursionError as exc:
        raise BadRequest("the body's JSON is nested too deeply", "err_malformed_json") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("measurements"), list):
        raise Unprocessable('the body must be {"measurements": [envelope, ...]}')
    items: list[Any] = doc["measurements"]
    if len(items) > max_items:
        raise TooLarge(f"at most {max_items} measurements a batch", "err_batch_too_large")
    return items


@router.post(
    "/measurements",
    response_model=BatchOut,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _BATCH_SCHEMA}},
        }
    },
)
async def submit(
    request: Request, settings: SettingsDep, clock: ClockDep, network_of: NetworkOfDep
) -> BatchOut:
    body = await request.body()
    encoding = request.headers.get("content-encoding", "").strip().lower()
    service = IngestService(settings, clock)
    started = time.perf_counter()
    limiter = request.app.state.ingest_limiter
    admission = request.app.state.admission

    def ingest() -> list[Any]:
        # Off the event loop, and at most a few at once: the work is CPU-bound and
        # GIL-bound, so more threads only add switching and memory.
        items = _items(
            _decompress(body, encoding, settings.max_body_bytes), settings.max_batch_items
        )
        # Rates, quotas and the target list apply after the signatures (the service).
        session = request.app.state.sessions()
        try:
            return service.ingest(session, items, network_of, admission)
        finally:
            session.close()

    results = await anyio.to_thread.run_sync(ingest, limiter=limiter)
    metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
    counts = {s: sum(1 for r in results if r.status == s) for s in ("accepted", "duplicate")}
    return BatchOut.model_validate(
        {
            "results": [r.to_json() for r in results],
            "accepted": counts["accepted"],
            "duplicates": counts["duplicate"],
            "rejected": len(results) - counts["accepted"] - counts["duplicate"],
        }
    )


class MeasurementOut(BaseModel):
    """A stored measurement as the caller's view shows it (collector/services/exports.py)."""

    id: str
    source: Literal["blockwatch", "ooni"]
    role: str
    domain: str
    cc: str
    asn: int | None  # None: a network too small to be named
    network_source: str
    started_at: str
    flags: list[str] | None  # its verdict; None for a control, or before the analysis
    key_id: str | None  # the rest: the signed bytes, given when the view may show them
    public_key: str | None
    payload: str | None
    signature: str | None
    report_id: str | None  # OONI's provenance
    measurement_uid: str | None


class MeasurementList(BaseModel):
    data: list[MeasurementOut]
    count: int
    next: str | None  # the cursor of the next page (None: the last page)


def _when(name: str, text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise Unprocessable(
            f"{name} must be an RFC 3339 time or a date", "err_validation"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@router.get("/measurements", response_model=MeasurementList)
def list_measurements(
    session: SessionDep,
    publication: PublicationDep,
    domain: Annotated[str | None, Query(max_length=253)] = None,
    cc: Annotated[str | None, Query(pattern=r"^[A-Za-z]{2}$")] = None,
    since: Annotated[str | None, Query(max_length=40)] = None,
    until: Annotated[str | None, Query(max_length=40)] = None,
    source: Literal["blockwatch", "ooni"] | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(pattern=r"^[0-9]{1,19}$")] = None,
) -> MeasurementList:
    """Stored measurements, oldest stored first, a page at a time (``cursor``: the
    previous page's ``next``). k-anonymous like every public answer; a volunteer's
    signed bytes and key only when their probe runs with --public-evidence; OONI's
    and the control's in full; with the admin token, everything."""
    filters = Filters(
        domain=domain.strip().lower() if domain else None,
        cc=cc.upper() if cc else None,
        since=_when("since", since),
        until=_when("until", until),
        source=source,
    )
    rows, last = page(session, "measurements", filters, publication,
                      after=int(cursor or 0), limit=limit)  # fmt: skip
    more = last is not None and len(rows) == limit
    return MeasurementList.model_validate(
        {"data": rows, "count": len(rows), "next": str(last) if more else None}
    )
