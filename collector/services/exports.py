"""Exports for researchers: measurements, verdicts and events, streamed in constant memory.

``rows`` reads the database a batch at a time by primary key (keyset paging: no
OFFSET, no cursor held open across batches) and yields plain dicts; the writers
(``write_jsonl``, ``write_csv``, ``write_parquet``) write them as they come, so
a million rows cost what one batch costs (bench/bench_export.py measures it).

What a row shows is the publication's (collector/core/publication.py), as for
every public answer: the *public* view (the default of ``blockwatch-collector
export``) names a network only when at least K volunteers report from it,
rounds every time down to the measurement interval, and gives a Blockwatch
measurement's signed bytes and key only when its probe runs with
``--public-evidence`` and its network is named (docs/evidence.md: a key id
links one volunteer's measurements). OONI's measurements are public already
(OONI's archive) and the control's identify nobody: both are always given.
The *full* view (``--full``, the operator's own) shows everything. Probe ids are
never exported.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session, sessionmaker

from collector.core.db import session_scope
from collector.core.models import (
    EventRow,
    MeasurementRow,
    ProbeKeyRow,
    ProbeRow,
    VerdictRow,
    unpack_payload,
)
from collector.core.publication import Publication, iso, network_volunteers
from collector.services.events import event_json
from collector.services.ooni import OONI_PROBE_ID
from probe_agent.protocol.envelope import b64encode

WHAT = ("measurements", "verdicts", "events")
BATCH = 2000
# The columns of each export, in order (csv and parquet; jsonl has the same keys).
COLUMNS: dict[str, tuple[str, ...]] = {
    "verdicts": ("measurement_id", "source", "domain", "cc", "asn", "network_source",
                 "started_at", "flags", "reasons", "rule_version"),
    "measurements": ("id", "source", "role", "domain", "cc", "asn", "network_source",
                     "started_at", "flags", "key_id", "public_key", "payload", "signature",
                     "report_id", "measurement_uid"),
    "events": ("id", "domain", "cc", "asns", "withheld_networks", "methods", "scope", "state",
               "started_at", "detected_at", "ended_at", "probes", "rule_version", "history"),
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Filters:
    domain: str | None = None
    cc: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    source: str | None = None  # blockwatch | ooni (measurements and verdicts)


def _filtered(query: Select[Any], model: Any, filters: Filters, time: Any) -> Select[Any]:
    if filters.domain:
        query = query.where(model.domain == filters.domain)
    if filters.cc:
        query = query.where(model.cc == filters.cc)
    if filters.since:
        query = query.where(time >= filters.since)
    if filters.until:
        query = query.where(time < filters.until)
    return query


def count(sessions: sessionmaker[Session], what: str, filters: Filters) -> int:
    """How many rows ``rows`` will yield at most (for a progress bar)."""
    model, time = _model(what)
    with session_scope(sessions) as session:
        query = _filtered(select(func.count()).select_from(model), model, filters, time)
        return int(session.scalar(query) or 0)


def _model(what: str) -> tuple[Any, Any]:
    if what == "verdicts":
        return VerdictRow, VerdictRow.started_at
    if what == "measurements":
        return MeasurementRow, MeasurementRow.started_at
    if what == "events":
        return EventRow, EventRow.started_at
    raise ValueError(f"--what must be one of {', '.join(WHAT)}")


class _Names:
    """Which networks the view may name, per (domain, country): read once per key."""

    def __init__(self, publication: Publication) -> None:
        self.publication = publication
        self.known: dict[tuple[str, str], dict[int, int]] = {}

    def load(self, session: Session, keys: Iterable[tuple[str, str]]) -> None:
        if self.publication.min_volunteers <= 1:
            return
        wanted = {k for k in keys if k not in self.known}
        if wanted:
            found = network_volunteers(session, wanted)
            for key in wanted:
                self.known[key] = found.get(key, {})

    def named(self, domain: str, cc: str, asn: int) -> bool:
        if self.publication.min_volunteers <= 1:
            return True
        return self.publication.names(self.known.get((domain, cc), {}).get(asn, 0))

    def volunteers(self, domain: str, cc: str) -> dict[int, int]:
        return self.known.get((domain, cc), {})


def rows(
    sessions: sessionmaker[Session], what: str, filters: Filters, publication: Publication
) -> Iterator[dict[str, Any]]:
    """Every row of *what* matching *filters*, as *publication* lets it show."""
    names = _Names(publication)
    last = 0
    while True:
        with session_scope(sessions) as session:
            out, last_id = page(session, what, filters, publication, after=last, names=names)
            session.expunge_all()
        if last_id is None:
            return
        last = last_id
        yield from out


def page(
    session: Session,
    what: str,
    filters: Filters,
    publication: Publication,
    *,
    after: int = 0,
    limit: int = BATCH,
    names: _Names | None = None,
) -> tuple[list[dict[str, Any]], int | None]:
    """One batch of rows after the row id *after*, and the last id read (the cursor of
    the next batch; None when there is none)."""
    model, time = _model(what)
    names = names or _Names(publication)
    # Verdicts as plain rows (a million ORM objects cost 4x as much); the others as
    # rows of the model.
    columns = model.__table__ if what == "verdicts" else model
    query = _filtered(select(columns).where(model.id > after), model, filters, time)
    if filters.source and what == "measurements":
        query = query.where(MeasurementRow.source == filters.source)
    elif filters.source and what == "verdicts":
        ooni = VerdictRow.probe_id == OONI_PROBE_ID
        query = query.where(ooni if filters.source == "ooni" else ~ooni)
    query = query.order_by(model.id).limit(limit)
    batch: list[Any] = list(
        session.execute(query).all() if what == "verdicts" else session.scalars(query)
    )
    if not batch:
        return [], None
    names.load(session, {(r.domain, r.cc) for r in batch})
    if what == "verdicts":
        out = [_verdict(r, names, publication) for r in batch]
    elif what == "events":
        out = [_event(r, names, publication) for r in batch]
    else:
        out = _measurements(session, batch, names, publication)
    return out, batch[-1].id


def _time(publication: Publication, value: datetime | None) -> str | None:
    return publication.time(iso(value)) if value is not None else None


def _verdict(row: Any, names: _Names, publication: Publication) -> dict[str, Any]:
    ooni = row.probe_id == OONI_PROBE_ID  # public already, with its network
    return {
        "measurement_id": row.measurement_id,
        "source": "ooni" if ooni else "blockwatch",
        "domain": row.domain,
        "cc": row.cc,
        "asn": row.asn if ooni or names.named(row.domain, row.cc, row.asn) else None,
        "network_source": row.network_source,
        "started_at": _time(publication, row.started_at),
        "flags": row.flags.split(","),
        "reasons": json.loads(row.reasons),
        "rule_version": row.rule_version,
    }


def _event(row: EventRow, names: _Names, publication: Publication) -> dict[str, Any]:
    document = publication.event(event_json(row), names.volunteers(row.domain, row.cc))
    out = {name: document.get(name) for name in COLUMNS["events"]}
    out["withheld_networks"] = document.get("withheld_networks", 0)
    return out


def _measurements(
    session: Session, batch: list[MeasurementRow], names: _Names, publication: Publication
) -> list[dict[str, Any]]:
    keys = {
        k.key_id: k.public_key
        for k in session.scalars(
            select(ProbeKeyRow).where(ProbeKeyRow.key_id.in_({r.key_id for r in batch}))
        )
    }
    flags = {
        pk: value.split(",")
        for pk, value in session.execute(
            select(VerdictRow.measurement_pk, VerdictRow.flags).where(
                VerdictRow.measurement_pk.in_([r.id for r in batch])
            )
        )
    }
    public_evidence = set(
        session.scalars(
            select(ProbeRow.id).where(
                ProbeRow.id.in_({r.probe_id for r in batch}), ProbeRow.public_evidence.is_(True)
            )
        )
    )
    out = []
    for row in batch:
        named = names.named(row.domain, row.cc, row.asn)
        ooni = row.source == "ooni"
        shown = (
            publication.full
            or ooni
            or row.role == "control"
            or (named and row.probe_id in public_evidence)
        )
        item: dict[str, Any] = dict.fromkeys(COLUMNS["measurements"])
        item.update(
            id=row.measurement_id,
            source=row.source,
            role=row.role,
            domain=row.domain,
            cc=row.cc,
            asn=row.asn if named or ooni else None,
            network_source=row.network_source,
            started_at=_time(publication, row.started_at),
            flags=flags.get(row.id),  # the verdict; none for a control
        )
        if shown:
            payload = unpack_payload(row.payload)
            item["payload"] = b64encode(payload)
            item["key_id"] = row.key_id
            if ooni:
                document = json.loads(payload)
                item["report_id"] = document.get("report_id")
                item["measurement_uid"] = document.get("measurement_uid")
            else:
                item["public_key"] = b64encode(keys[row.key_id]) if row.key_id in keys else None
                item["signature"] = b64encode(row.signature)
        out.append(item)
    return out


# -- writers ---------------------------------------------------------------------------


def write_jsonl(out: IO[str], items: Iterable[dict[str, Any]], tick: Callable[[], None]) -> int:
    n = 0
    for item in items:
        out.write(json.dumps(item, ensure_ascii=False, separators=(",", ":")) + "\n")
        n += 1
        tick()
    return n


def _cell(value: Any) -> Any:
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return "" if value is None else value


def write_csv(
    out: IO[str], what: str, items: Iterable[dict[str, Any]], tick: Callable[[], None]
) -> int:
    """CSV with a header; lists as JSON text, null as an empty cell."""
    writer = csv.writer(out)
    writer.writerow(COLUMNS[what])
    n = 0
    for item in items:
        writer.writerow([_cell(item.get(c)) for c in COLUMNS[what]])
        n += 1
        tick()
    return n


def write_parquet(
    path: str, what: str, items: Iterable[dict[str, Any]], tick: Callable[[], None]
) -> int:
    """Parquet (pyarrow, the ``parquet`` extra), a row group per batch; lists as lists."""
    try:
        import pyarrow as pa  # type: ignore[import-untyped]  # noqa: PLC0415
        import pyarrow.parquet as pq  # type: ignore[import-untyped]  # noqa: PLC0415
    except ImportError:
        raise RuntimeError(
            "parquet needs pyarrow: pip install 'blockwatch[parquet]' (or use jsonl or csv)"
        ) from None
    schema = pa.schema([(c, _arrow_type(pa, what, c)) for c in COLUMNS[what]])
    n = 0
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        chunk: list[dict[str, Any]] = []
        for item in items:
            chunk.append({c: item.get(c) for c in COLUMNS[what]})
            n += 1
            tick()
            if len(chunk) >= BATCH * 5:
                writer.write_batch(pa.RecordBatch.from_pylist(chunk, schema=schema))
                chunk = []
        if chunk:
            writer.write_batch(pa.RecordBatch.from_pylist(chunk, schema=schema))
    return n


def _arrow_type(pa: Any, what: str, column: str) -> Any:
    if column in ("flags", "reasons", "methods"):
        return pa.list_(pa.string())
    if column == "asns":
        return pa.list_(pa.int64())
    if column in ("asn", "id", "probes", "withheld_networks") and not (
        what == "measurements" and column == "id"
    ):
        return pa.int64()
    if column == "history":
        return pa.bool_()
    return pa.string()
