"""OONI files in: read, judged by our rules, reported (docs/methodology.md, "OONI measurements").

``read_files`` streams OONI measurements out of files as OONI publishes them:
one JSON object (``.json``), a JSON array, or one object a line (``.jsonl``),
each possibly gzip-compressed (recognized by its magic bytes, not its name).
Every measurement keeps its exact bytes (its provenance is OONI's public
archive: ``report_id`` and ``measurement_uid``). A line that is not a readable
web_connectivity measurement is reported with its file and line number and
skipped: the others are read all the same.

``judge`` gives the verdict of one (``collector.analysis.ooni`` maps it, the
rules are Blockwatch's), and ``report_line`` the JSON line of ``ooni import
--format jsonl`` (DESIGN, "OONI and exports").
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, cast
from urllib.parse import urlsplit

import aiohttp
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from collector.analysis import Context, Verdict, analyze
from collector.analysis.ooni import TEST_NAME, OONIFormatError, OONIMeasurement, parse
from collector.core.clock import Clock
from collector.core.db import session_scope
from collector.core.models import (
    MeasurementRow,
    ProbeRow,
    TargetRow,
    VerdictRow,
    pack_payload,
)
from collector.core.settings import CollectorSettings
from collector.services.targets import TargetService
from collector.services.volunteers import evaluate_soon
from probe_agent.protocol.addresses import IPNetwork

GZIP_MAGIC = b"\x1f\x8b"
MAX_LINE = 16 * 1024 * 1024  # one measurement; OONI's largest are a few MB (bodies)


@dataclass(frozen=True, slots=True)
class Item:
    """One measurement read: where from, its exact bytes, and it parsed (or why not)."""

    file: str
    line: int  # 1-based; the element's index + 1 in a JSON array
    raw: bytes
    measurement: OONIMeasurement | None
    error: str | None = None


def _open(path: Path) -> IO[bytes]:
    handle: IO[bytes] = path.open("rb")
    if handle.read(2) == GZIP_MAGIC:
        handle.close()
        return cast(IO[bytes], gzip.open(path, "rb"))
    handle.seek(0)
    return handle


def _item(name: str, line: int, raw: bytes) -> Item:
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return Item(name, line, raw, None, f"not JSON: {exc}")
    try:
        return Item(name, line, raw, parse(document))
    except OONIFormatError as exc:
        return Item(name, line, raw, None, str(exc))


def read_file(path: Path) -> Iterator[Item]:
    """The measurements of one file, streamed: JSON lines a line at a time; a JSON
    array, or one object pretty-printed over several lines, read whole."""
    name = str(path)
    try:
        handle = _open(path)
    except OSError as exc:
        yield Item(name, 0, b"", None, f"cannot read: {exc.strerror or exc}")
        return
    with handle:
        try:
            first = handle.readline(MAX_LINE)
            while first and not first.strip():
                first = handle.readline(MAX_LINE)
            if first.lstrip().startswith(b"["):
                yield from _array(name, first + handle.read())
            elif first.strip() and not _complete(first):  # one object over many lines
                yield _item(name, 1, (first + handle.read()).strip())
            else:
                number, line = 1, first
                while line:
                    if line.strip():
                        yield _item(name, number, line.strip())
                    number, line = number + 1, handle.readline(MAX_LINE)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            yield Item(name, 0, b"", None, f"cannot read: {exc}")


def _complete(line: bytes) -> bool:
    try:
        json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return False
    return True


def _array(name: str, body: bytes) -> Iterator[Item]:
    try:
        documents = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        yield Item(name, 1, body, None, f"not JSON: {exc}")
        return
    for index, document in enumerate(documents, start=1):
        raw = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
        try:
            yield Item(name, index, raw, parse(document))
        except OONIFormatError as exc:
            yield Item(name, index, raw, None, str(exc))


def read_files(paths: Iterable[Path]) -> Iterator[Item]:
    for path in paths:
        yield from read_file(path)


def read_stream(name: str, stream: IO[bytes]) -> Iterator[Item]:
    """Standard input (``-``): JSON lines, possibly gzip-compressed."""
    head = stream.read(2)
    source: IO[bytes] = io.BytesIO(head + stream.read())
    if head == GZIP_MAGIC:
        source = cast(IO[bytes], gzip.GzipFile(fileobj=cast(BinaryIO, source)))
    for number, line in enumerate(source, start=1):
        if line.strip():
            yield _item(name, number, line.strip())


def verdict_columns(measurement: OONIMeasurement, verdict: Verdict) -> dict[str, Any]:
    """The judged columns of an OONI measurement's verdict row (the import's and a
    re-analysis's): its own test helper is the control it was judged against."""
    helper = ["ooni-test-helper"] if measurement.control is not None else []
    return {
        "flags": ",".join(sorted(verdict.flags)),
        "blocked": verdict.blocked,
        "reasons": json.dumps(list(verdict.reasons)),
        "triggers": "[]",
        "controls": json.dumps(helper),
        "rule_version": verdict.rule_version,
    }


def judge(measurement: OONIMeasurement, lab_networks: tuple[IPNetwork, ...] = ()) -> Verdict:
    """Our verdict on one OONI measurement: the rules, its own control, its ASNs."""
    ctx = Context(asn_of=measurement.asns.get, lab_networks=lab_networks)
    controls = [measurement.control] if measurement.control is not None else []
    return analyze(measurement.record, controls, ctx)


def report_line(item: Item, verdict: Verdict | None, stored: bool, target: bool) -> dict[str, Any]:
    """One line of ``ooni import --format jsonl``: our verdict beside OONI's."""
    m = item.measurement
    if m is None:
        return {"file": item.file, "line": item.line, "stored": False, "error": item.error}
    return {
        "input": m.input,
        "domain": m.domain,
        "probe_cc": m.probe_cc,
        "probe_asn": m.probe_asn,
        "measurement_start_time": m.started_at.strftime("%Y-%m-%d %H:%M:%S"),
        "report_id": m.report_id,
        "measurement_uid": m.measurement_uid,
        "target": target,
        "stored": stored,
        "verdict": (
            {"flags": sorted(str(f) for f in verdict.flags), "reasons": list(verdict.reasons)}
            if verdict is not None
            else None
        ),
        "ooni": {"blocking": m.blocking, "accessible": m.accessible},
    }


OONI_PROBE_ID = "ooni"  # every OONI measurement's "probe" (docs/methodology.md)
OONI_VOLUNTEER = "ooni:"  # + ASN: OONI votes as one volunteer per network
OONI_KEY_ID = "ooni"
NETWORK_SOURCE = "ooni"  # attributed to OONI's probe_cc/probe_asn, never to probe_ip
BATCH = 500


@dataclass
class ImportStats:
    read: int = 0
    stored: int = 0
    duplicates: int = 0
    not_targets: int = 0
    errors: int = 0
    added_targets: int = 0
    blocked: int = 0
    keys: set[tuple[str, str]] = field(default_factory=set)  # (domain, cc) stored into

    def to_json(self) -> dict[str, int]:
        return {k: v for k, v in vars(self).items() if isinstance(v, int)}


def measurement_id(measurement: OONIMeasurement, raw: bytes) -> str:
    """OONI's measurement uid, else the SHA-256 of its bytes (a report as a probe wrote it)."""
    if measurement.measurement_uid:
        return measurement.measurement_uid[:64]
    return "sha256:" + hashlib.sha256(raw).hexdigest()[:57]


class Importer:
    """OONI measurements stored as a source of their own (``measurements.source =
    'ooni'``, one volunteer ``ooni``), each with its verdict; nothing when dry."""

    def __init__(
        self,
        settings: CollectorSettings,
        clock: Clock,
        *,
        dry_run: bool = False,
        add_targets: bool = False,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.dry_run = dry_run
        self.add_targets = add_targets
        self.lab_networks = settings.lab_network_list

    def run(
        self,
        sessions: sessionmaker[Session],
        items: Iterable[Item],
        report: Callable[[dict[str, Any]], None],
    ) -> ImportStats:
        stats = ImportStats()
        batch: list[Item] = []
        for item in items:
            batch.append(item)
            if len(batch) >= BATCH:
                self._batch(sessions, batch, stats, report)
                batch = []
        if batch:
            self._batch(sessions, batch, stats, report)
        return stats

    def _batch(
        self,
        sessions: sessionmaker[Session],
        batch: list[Item],
        stats: ImportStats,
        report: Callable[[dict[str, Any]], None],
    ) -> None:
        """One transaction a batch: acknowledged (reported stored) means committed."""
        lines: list[dict[str, Any]] = []
        with session_scope(sessions) as session:
            domains = {i.measurement.domain for i in batch if i.measurement is not None}
            watched = set(
                session.scalars(
                    select(TargetRow.domain).where(
                        TargetRow.domain.in_(sorted(domains)), TargetRow.enabled.is_(True)
                    )
                )
            )
            if not self.dry_run:
                _ensure_probe(session)
            touched: set[tuple[str, str]] = set()
            for item in batch:
                stats.read += 1
                m = item.measurement
                if m is None:
                    stats.errors += 1
                    lines.append(report_line(item, None, stored=False, target=False))
                    continue
                verdict = judge(m, self.lab_networks)
                stats.blocked += verdict.blocked
                target = m.domain in watched
                stored = False
                if not target and not self.add_targets:
                    stats.not_targets += 1
                elif self.dry_run:
                    stats.stored += 1  # would be (a duplicate is found only by storing)
                else:
                    if not target:
                        TargetService().add(session, [m.domain], source="ooni import")
                        watched.add(m.domain)
                        stats.added_targets += 1
                    stored = self._store(session, item, m, verdict)
                    if stored:
                        stats.stored += 1
                        touched.add((m.domain, m.probe_cc))
                    else:
                        stats.duplicates += 1
                lines.append(report_line(item, verdict, stored=stored, target=target))
            if touched:
                evaluate_soon(session, touched)
                stats.keys |= touched
        for line in lines:  # after the commit
            report(line)

    def _store(self, session: Session, item: Item, m: OONIMeasurement, verdict: Verdict) -> bool:
        """The measurement and its verdict; False when it was stored already."""
        now = self.clock.now()
        mid = measurement_id(m, item.raw)
        raw = scrubbed(item.raw)
        values = {
            "measurement_id": mid,
            "probe_id": OONI_PROBE_ID,
            "key_id": OONI_KEY_ID,
            "domain": m.domain,
            "started_at": m.started_at,
            "received_at": now,
            "cc": m.probe_cc,
            "asn": m.probe_asn,
            "network_source": NETWORK_SOURCE,
            "role": "ooni",
            "hints": "[]",
            "payload": pack_payload(raw),
            "signature": b"",
            "source": "ooni",
        }
        dialect = session.get_bind().dialect.name
        insert_into = postgresql.insert if dialect == "postgresql" else sqlite.insert
        statement = (
            insert_into(MeasurementRow)
            .values(**values)
            .on_conflict_do_nothing(index_elements=["key_id", "measurement_id"])
            .returning(MeasurementRow.id)
        )
        pk = session.scalar(statement)
        if pk is None:
            return False
        session.add(
            VerdictRow(
                measurement_pk=pk,
                measurement_id=mid,
                probe_id=OONI_PROBE_ID,
                domain=m.domain,
                cc=m.probe_cc,
                asn=m.probe_asn,
                network_source=NETWORK_SOURCE,
                started_at=m.started_at,
                analyzed_at=now,
                **verdict_columns(m, verdict),
            )
        )
        return True


SCRUBBED_IP = "127.0.0.1"  # what OONI publishes in place of every probe's address


def scrubbed(raw: bytes) -> bytes:
    """The bytes to store: as read, unless ``probe_ip`` holds an address (a report
    straight from a probe, before OONI's pipeline scrubbed it), which is replaced
    by OONI's own placeholder: no volunteer's address is ever stored."""
    if b'"probe_ip"' not in raw:
        return raw
    document = json.loads(raw)
    if document.get("probe_ip") in (None, SCRUBBED_IP):
        return raw
    document["probe_ip"] = SCRUBBED_IP
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


def _ensure_probe(session: Session) -> None:
    """The one ``probes`` row OONI's measurements hang from (never checks in, never
    enrolls: its role is ``ooni``)."""
    if session.get(ProbeRow, OONI_PROBE_ID) is None:
        session.add(
            ProbeRow(id=OONI_PROBE_ID, status="active", role="ooni", spool_depth=0,
                     evicted_total=0)
        )  # fmt: skip
        session.flush()


# -- OONI's public API (ooni fetch) --------------------------------------------------

OONI_API = "https://api.ooni.io"
PAGE_SIZE = 100
RETRIES = 4
FETCH_CONCURRENCY = 4


class FetchError(RuntimeError):
    """OONI's API answered what this reader cannot use (after the retries)."""


@dataclass(frozen=True, slots=True)
class Query:
    domain: str
    cc: str
    since: str  # YYYY-MM-DD (OONI's since: measurement_start_time > since)
    until: str | None = None
    limit: int = 1000  # measurements at most


async def fetch(api: str, query: Query, timeout: float = 30.0) -> list[Item]:
    """OONI's web_connectivity measurements of *query*, raw, as OONI's API lists them
    (``GET /api/v1/measurements``, paged by ``offset``) and serves them
    (``GET /api/v1/raw_measurement?measurement_uid=``). Pages follow the API's
    ``next_url`` only on *api*'s own origin; a 429 or 5xx is retried with backoff
    (``Retry-After`` honoured). The list's ``measurement_url`` is not followed:
    every body comes from *api*."""
    base = api.rstrip("/")
    params: dict[str, str] = {
        "domain": query.domain,
        "probe_cc": query.cc,
        "test_name": TEST_NAME,
        "since": query.since,
        "order_by": "measurement_start_time",
        "order": "asc",
        "limit": str(min(PAGE_SIZE, query.limit)),
        "offset": "0",
    }
    if query.until:
        params["until"] = query.until
    uids: list[str] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http:
        url: str | None = f"{base}/api/v1/measurements"
        request_params: dict[str, str] | None = params
        while url is not None and len(uids) < query.limit:
            page = json.loads(await _get(http, url, request_params))
            results = page.get("results") if isinstance(page, dict) else None
            if not isinstance(results, list):
                raise FetchError(f"{url}: no results list in the answer")
            for result in results:
                uid = result.get("measurement_uid") if isinstance(result, dict) else None
                if isinstance(uid, str) and uid and result.get("test_name") == TEST_NAME:
                    uids.append(uid)
            url, request_params = _next_page(base, page, params, len(results))
        uids = list(dict.fromkeys(uids))[: query.limit]
        gate = asyncio.Semaphore(FETCH_CONCURRENCY)

        async def body(uid: str) -> bytes:
            async with gate:
                return await _get(http, f"{base}/api/v1/raw_measurement", {"measurement_uid": uid})

        bodies = await asyncio.gather(*(body(uid) for uid in uids))
    source = f"{base}/api/v1/raw_measurement"
    return [_item(f"{source}?measurement_uid={uid}", n, raw.strip())
            for n, (uid, raw) in enumerate(zip(uids, bodies, strict=True), start=1)]  # fmt: skip


def _next_page(
    base: str, page: dict[str, Any], params: dict[str, str], got: int
) -> tuple[str | None, dict[str, str] | None]:
    """The next page: the API's next_url when it is on *base*'s origin, else our offset."""
    metadata = page.get("metadata") if isinstance(page.get("metadata"), dict) else {}
    next_url = metadata.get("next_url") if isinstance(metadata, dict) else None
    if not next_url or got == 0:
        return None, None
    if isinstance(next_url, str) and urlsplit(next_url)[:2] == urlsplit(base)[:2]:
        return next_url, None
    params["offset"] = str(int(params["offset"]) + got)
    return f"{base}/api/v1/measurements", params


async def _get(http: aiohttp.ClientSession, url: str, params: dict[str, str] | None) -> bytes:
    delay = 1.0
    for attempt in range(RETRIES + 1):
        try:
            async with http.get(url, params=params, allow_redirects=False) as answer:
                body: bytes = await answer.read()
                if answer.status == 200:
                    return body
                retry = answer.status == 429 or answer.status >= 500
                wait = answer.headers.get("Retry-After", "")
                if not retry or attempt == RETRIES:
                    raise FetchError(f"{url}: HTTP {answer.status}")
                delay = max(delay, min(float(wait), 60.0)) if wait.isdigit() else delay
        except (aiohttp.ClientError, TimeoutError) as exc:
            if attempt == RETRIES:
                raise FetchError(f"{url}: {type(exc).__name__}") from None
        await asyncio.sleep(delay)
        delay *= 2
    raise FetchError(f"{url}: no answer")
