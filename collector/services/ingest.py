"""Ingestion: a batch of signed measurements in, one answer per item out.

For each item (``collector.services.auth``): decode the envelope, find its key,
verify the signature over the exact payload bytes, then parse and validate the
document, check its time window and the key's standing. Accepted items are
inserted together with ``ON CONFLICT (key_id, measurement_id) DO NOTHING ...
RETURNING``: whatever the database did not return was already there (a
resubmission, a replay) and is answered ``duplicate``, even when two replicas
race on the same item. An id is unique per signing key, never alone: another
key sending a known id stores its own measurement, and cannot make the real
probe's look like a duplicate (id squatting). One commit per
batch, before the answer: acknowledged means stored. Every rejection is counted
by its code (``metrics.REJECTIONS``), a fixed set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, cast

from sqlalchemy import Table, insert, select
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Session

from collector.core import metrics
from collector.core.clock import Clock
from collector.core.errors import CollectorError, TooLarge, Unprocessable
from collector.core.models import AnalysisQueueRow, MeasurementRow, ProbeKeyRow, pack_payload
from collector.core.settings import CollectorSettings
from collector.services.admission import Admission
from collector.services.auth import authenticate, envelope_from
from collector.services.documents import MeasurementDocument
from collector.services.geo import Network
from probe_agent.protocol.envelope import Envelope, Purpose


# Where the caller is: *network_of(declared, via_proxy)*, one request's closure over
# its address (collector.api.deps.get_network_of), used by ingest and check-in.
class NetworkOf(Protocol):
    """The network (and region) of the request's probe: located from its address, else
    declared; the address is forgotten once answered (collector.api.deps)."""

    def __call__(
        self, declared: tuple[str, int] | None, via_proxy: bool, region: str | None = None
    ) -> Network: ...


@dataclass
class IngestOutcome:
    """What became of one item of a batch (named apart from the probe's ItemResult,
    probe_agent.daemon.client, which reads the JSON this writes)."""

    index: int
    status: str  # accepted | duplicate | rejected
    measurement_id: str | None = None
    code: str | None = None
    message: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "index": self.index,
            "measurement_id": self.measurement_id,
            "status": self.status,
        }
        if self.code is not None:
            out["error"] = {"code": self.code, "message": self.message}
        return out


ItemResult = IngestOutcome  # the former name


TABLE = cast(Table, MeasurementRow.__table__)
COLUMNS = (
    "measurement_id",
    "probe_id",
    "key_id",
    "domain",
    "started_at",
    "received_at",
    "cc",
    "asn",
    "network_source",
    "region",
    "region_source",
    "role",
    "hints",
    "payload",
    "signature",
)
# One fixed statement of 15 parameters: psycopg prepares it once and pipelines the
# rows (SQLAlchemy's multi-row VALUES has 1,300 parameters, re-parsed every batch).
_PG_INSERT = (
    "INSERT INTO measurements (measurement_id, probe_id, key_id, domain, started_at, "
    "received_at, cc, asn, network_source, region, region_source, role, hints, payload, "
    "signature) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (key_id, measurement_id) DO NOTHING RETURNING id, key_id, measurement_id"
)


def _naive_utc(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).replace(tzinfo=None)  # as UTCDateTime stores them
    return value


StoredKey = tuple[str, str]  # (key_id, measurement_id): what makes a measurement unique


def _stored_key(row: dict[str, Any]) -> StoredKey:
    return row["key_id"], row["measurement_id"]


def _insert_postgresql(session: Session, rows: list[dict[str, Any]]) -> dict[StoredKey, int]:
    """Insert through psycopg's executemany with RETURNING: (key, measurement id) -> row id."""
    driver = session.connection().connection.driver_connection
    stored: dict[StoredKey, int] = {}
    with driver.cursor() as cursor:  # type: ignore[union-attr]
        params = [tuple(_naive_utc(row[c]) for c in COLUMNS) for row in rows]
        cursor.executemany(_PG_INSERT, params, returning=True)
        while True:
            found = cursor.fetchone()
            if found is not None:
                stored[(found[1], found[2])] = found[0]
            if not cursor.nextset():
                break
    return stored


def _already_stored(session: Session, rows: list[dict[str, Any]]) -> set[StoredKey]:
    wanted = {_stored_key(row) for row in rows}
    found = session.execute(
        select(MeasurementRow.key_id, MeasurementRow.measurement_id).where(
            MeasurementRow.measurement_id.in_(sorted({mid for _, mid in wanted}))
        )
    )
    return {(key_id, mid) for key_id, mid in found if (key_id, mid) in wanted}


class IngestService:
    def __init__(self, settings: CollectorSettings, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock

    def ingest(
        self,
        session: Session,
        items: list[Any],
        network_of: NetworkOf,
        admission: Admission | None = None,
    ) -> list[IngestOutcome]:
        """Each item verified, checked and stored (or refused with its reason).

        *admission* (one per app) applies the rate, the quota and the target list
        after the signatures; without it (tools, tests of the parsing) none apply.
        Raises RateLimited, storing nothing, when a verified key is over its rate.
        """
        results = [IngestOutcome(index=i, status="rejected") for i in range(len(items))]
        envelopes = {}
        for i, item in enumerate(items):
            try:
                envelopes[i] = envelope_from(item)
                if len(envelopes[i].payload) > self.settings.max_payload_bytes:
                    del envelopes[i]
                    raise TooLarge(
                        f"a measurement's signed bytes are over "
                        f"{self.settings.max_payload_bytes} bytes",
                        "err_payload_too_large",
                    )
            except CollectorError as exc:
                self._reject(results[i], exc)
        key_ids = {e.key_id for e in envelopes.values()}
        keys = (
            {
                k.key_id: k
                for k in session.scalars(select(ProbeKeyRow).where(ProbeKeyRow.key_id.in_(key_ids)))
            }
            if key_ids
            else {}
        )
        rows: dict[int, dict[str, Any]] = {}
        now = self.clock.now()
        for i, envelope in envelopes.items():
            try:
                rows[i] = self._accept(envelope, keys.get(envelope.key_id), network_of, now)
            except CollectorError as exc:
                self._reject(results[i], exc)
            else:
                results[i].measurement_id = rows[i]["measurement_id"]
        if admission is not None:
            self._admit(session, admission, rows, results, len(items), now)
        self._store(session, rows, results)
        if admission is not None:
            for i, row in rows.items():
                if results[i].status == "duplicate":
                    admission.give_back(row["key_id"], row["started_at"])
        for result in results:
            metrics.MEASUREMENTS.labels(status=result.status).inc()
        for i, row in rows.items():
            if results[i].status == "accepted":
                age = (row["received_at"] - row["started_at"]).total_seconds()
                metrics.MEASUREMENT_AGE.observe(max(0.0, age))
        return results

    def _admit(
        self,
        session: Session,
        admission: Admission,
        rows: dict[int, dict[str, Any]],
        results: list[IngestOutcome],
        items: int,
        now: datetime,
    ) -> None:
        """Rates (per verified key), then the target list and the quota, item by item."""
        admission.check_rates({row["key_id"] for row in rows.values()}, items)
        allowed, target_count = admission.targets.snapshot(session, now)
        quota = admission.quota(target_count)
        over: dict[int, CollectorError] = {}
        for i in list(rows):
            row = rows[i]
            try:
                if row["role"] != "control":  # the control measures what it is asked to
                    admission.check_domain(row["domain"], allowed)
            except CollectorError as exc:
                del rows[i]
                self._reject(results[i], exc)
                continue
            try:
                admission.take(row["key_id"], row["started_at"], quota)
            except CollectorError as exc:
                over[i] = exc
        if over:
            # Over the quota, unless already stored: a resubmission (its answer was
            # lost) is still answered "duplicate", or the probe would retry for ever.
            known = _already_stored(session, [rows[i] for i in over])
            for i, refusal in over.items():
                if _stored_key(rows[i]) not in known:
                    del rows[i]
                    self._reject(results[i], refusal)

    def _reject(self, result: IngestOutcome, exc: CollectorError) -> None:
        result.status, result.code, result.message = "rejected", exc.code, exc.message
        metrics.REJECTIONS.labels(reason=metrics.reason(exc.code)).inc()

    def _accept(
        self, envelope: Envelope, key: ProbeKeyRow | None, network_of: NetworkOf, now: datetime
    ) -> dict[str, Any]:
        signer, doc = authenticate(
            envelope, key, Purpose.MEASUREMENT, MeasurementDocument, self.settings, now
        )
        m = doc.measurement
        if m.started_at > doc.signed_at:  # and signed_at <= now + skew: never in the future
            raise Unprocessable(
                "measurement.started_at is after signed_at", "err_timestamp_out_of_window"
            )
        declared = (doc.declared.cc.upper(), doc.declared.asn) if doc.declared else None
        network = network_of(declared, doc.via_proxy, doc.region)
        return {
            "measurement_id": m.measurement_id,
            "probe_id": signer.probe.id,
            "key_id": signer.key.key_id,
            "domain": m.domain,
            "started_at": m.started_at,
            "received_at": now,
            "cc": network.cc,
            "asn": network.asn,
            "network_source": str(network.source),
            "region": network.region,
            "region_source": network.region_source,
            "role": signer.probe.role,
            "hints": json.dumps(m.hints),
            "payload": pack_payload(envelope.payload),
            "signature": envelope.signature,
        }

    def _store(
        self, session: Session, rows: dict[int, dict[str, Any]], results: list[IngestOutcome]
    ) -> None:
        # Within one batch the first of two items with the same key and id wins.
        first: dict[StoredKey, int] = {}
        for i, row in rows.items():
            first.setdefault(_stored_key(row), i)
        unique = [rows[i] for i in first.values()]
        stored: dict[StoredKey, int] = {}
        if unique:
            if session.get_bind().dialect.name == "postgresql":
                stored = _insert_postgresql(session, unique)
            else:
                statement = (
                    sqlite.insert(TABLE)
                    .on_conflict_do_nothing(index_elements=["key_id", "measurement_id"])
                    .returning(TABLE.c.id, TABLE.c.key_id, TABLE.c.measurement_id)
                )
                result = session.connection().execute(statement, unique)
                stored = {(key_id, mid): pk for pk, key_id, mid in result}
            # Probes' measurements wait for the detector's pass (controls are matched
            # to them there); a control's are read by that matching, not analyzed.
            queued = [
                {"measurement_pk": stored[_stored_key(row)], "not_before": row["received_at"]}
                for row in unique
                if row["role"] != "control" and _stored_key(row) in stored
            ]
            if queued:
                session.execute(insert(AnalysisQueueRow), queued)
        session.commit()
        for i, row in rows.items():
            key = _stored_key(row)
            accepted = key in stored and first[key] == i
            results[i].status = "accepted" if accepted else "duplicate"
