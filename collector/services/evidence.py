"""Evidence bundles: an event's signed measurements, and the collector's statement on them.

Where this sits in the data flow: after detection. ``GET
/api/v1/events/{id}/evidence`` (collector.api.routes.evidence) asks ``bundle``
for an event's evidence: the measurements its ids name, each as the exact bytes
the probe signed (``MeasurementRow.payload``, decompressed), with the signature
and the probe's public key, plus the controls their verdicts were judged
against; and a statement, signed with the collector's key
(collector.core.keys), holding the event and, for each measurement, its key
id, the SHA-256 of its payload and the network the collector attributed it to,
which the probe's signature does not cover. The format is in
``probe_agent.protocol.evidence``, which verifies it; docs/evidence.md says it
field by field.

Who gets what (docs/evidence.md, "Who may fetch what"):

- the admin token: everything (the *full* audience);
- the domain's verified subscribers (their management token) at once, and
  anyone ``evidence_delay`` after the event's detection (the *public*
  audience): only the measurements of networks where at least K
  (``publish_min_volunteers``) distinct volunteers whose votes count, and whose
  probes run with ``--public-evidence``, measured this event; the others are
  listed in the statement by hash and attribution only (no key id, which would
  link a volunteer's measurements across events), with the ASN and region of a
  network of fewer than K volunteers folded (``null``), as every public answer.
  Before the delay anyone else gets ``403 err_evidence_not_public``, saying when.

Measurement ids are unique per key, not alone: an id is looked up with the
event's domain and country, and of two rows with one id the one by a volunteer
of the event with a blocked verdict is kept (another key may have sent the id).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from collector import __version__
from collector.core.clock import Clock
from collector.core.errors import Forbidden, NotFound, Unauthorized
from collector.core.keys import CollectorKey
from collector.core.models import (
    EventRow,
    MeasurementRow,
    ProbeKeyRow,
    ProbeRow,
    TargetRow,
    VerdictRow,
    unpack_payload,
)
from collector.core.publication import floor_time, iso
from collector.core.settings import CollectorSettings
from collector.services.events import json_list
from collector.services.subscriptions import SubscriptionService
from collector.services.volunteers import Standing, standings
from probe_agent.protocol.envelope import b64encode
from probe_agent.protocol.evidence import (
    FORMAT,
    STATEMENT_FORMAT,
    STATEMENT_PREFIX,
    WELL_KNOWN_PATH,
)

API_BASE = "/api/v1"


class Audience(StrEnum):
    FULL = "full"  # the operator
    PUBLIC = "public"  # verified subscribers at once, anyone after the delay


@dataclass(frozen=True, slots=True)
class Item:
    """One measurement of a bundle, with what the collector knows of its probe."""

    row: MeasurementRow
    payload: bytes  # the exact signed bytes
    public_key: bytes
    region: str | None
    volunteer: str | None  # None for a control
    counts: bool  # a vote that counts (collector.services.volunteers)
    public_evidence: bool  # the probe runs with --public-evidence

    @property
    def network(self) -> tuple[str, int]:
        return self.row.cc, self.row.asn

    @property
    def ident(self) -> tuple[str, str]:
        """What makes a measurement unique: its key and its id."""
        return self.row.key_id, self.row.measurement_id

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.payload).hexdigest()

    @property
    def ooni(self) -> bool:
        """An OONI measurement: public already (OONI's archive), signed by no probe."""
        return self.row.source == "ooni"


def well_known(settings: CollectorSettings, key: CollectorKey) -> dict[str, Any]:
    """``/.well-known/blockwatch.json``: what a verifier anchors the collector's key to."""
    return {
        "collector_key_id": key.key_id,
        "public_key": b64encode(key.public_key),
        "key_algorithm": "ed25519",
        "evidence_format": FORMAT,
        "statement_format": STATEMENT_FORMAT,
        "statement_prefix": STATEMENT_PREFIX.decode(),
        "api_base": API_BASE,
        "evidence_path": API_BASE + "/events/{id}/evidence",
        "public_url": settings.public_url or None,
        "publish_min_volunteers": settings.publish_min_volunteers,
        "evidence_delay_seconds": settings.evidence_delay,
        "software": {"name": "blockwatch-collector", "version": __version__},
        "well_known_path": WELL_KNOWN_PATH,
    }


def _iso(value: datetime | None) -> str | None:
    return iso(value) if value is not None else None


class EvidenceService:
    def __init__(self, settings: CollectorSettings, key: CollectorKey, clock: Clock) -> None:
        self.settings = settings
        self.key = key
        self.clock = clock

    # -- who may fetch what ----------------------------------------------------

    def public_at(self, event: EventRow) -> datetime:
        """When the event's evidence becomes public: the delay after its detection,
        rounded up to the measurement interval (the exact detection time is not public)."""
        due = event.detected_at + timedelta(seconds=self.settings.evidence_delay)
        step = self.settings.measure_interval
        return datetime.fromtimestamp(math.ceil(due.timestamp() / step) * step, UTC)

    def audience(
        self, session: Session, event: EventRow, *, admin: bool, token: str | None
    ) -> Audience:
        if admin:
            return Audience.FULL
        if token and self._verified_subscriber(session, event.domain, token):
            return Audience.PUBLIC
        public_at = self.public_at(event)
        if self.clock.now() >= public_at:
            return Audience.PUBLIC
        given = " (the token given is neither)" if token else ""
        raise Forbidden(
            f"the evidence of event {event.id} becomes public at {_iso(public_at)} "
            f"({self.settings.evidence_delay:g} s after its detection); until then only the "
            "operator (admin token) and the domain's verified subscribers (their subscription "
            f"management token, as `Authorization: Bearer bwm_...`) may fetch it{given}",
            "err_evidence_not_public",
        )

    def _verified_subscriber(self, session: Session, domain: str, token: str) -> bool:
        try:
            owned = SubscriptionService(self.settings).owned(session, token, admin=False)
        except Unauthorized:
            return False
        target = session.scalar(select(TargetRow).where(TargetRow.domain == domain))
        group = target.group.name if target is not None and target.group else None
        return any(
            row.state != "pending" and (row.domain == domain or (group and row.group_name == group))
            for row in owned
        )

    # -- the bundle --------------------------------------------------------------

    def bundle(
        self, session: Session, event_id: int, *, admin: bool, token: str | None
    ) -> dict[str, Any]:
        """The evidence bundle of event *event_id* for this caller (raises when refused)."""
        event = session.get(EventRow, event_id)
        if event is None:
            raise NotFound(f"no event {event_id}")
        audience = self.audience(session, event, admin=admin, token=token)
        ids = [str(i) for i in json_list(event.evidence)]
        probes, controls = gather(session, event, ids)
        published = publishable(probes, self.settings.publish_min_volunteers, audience)
        named = named_networks(probes, self.settings.publish_min_volunteers, audience)
        found = {item.row.measurement_id for item in probes}
        statement = self._statement(event, audience, probes, controls, published, named)
        statement["unavailable"] = [i for i in ids if i not in found]
        raw = json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()
        shown = [item for item in probes if item.ident in published] + controls
        return {
            "format": FORMAT,
            "collector_key_id": self.key.key_id,
            "collector_public_key": b64encode(self.key.public_key),
            "event_id": event.id,
            "audience": str(audience),
            "withheld": statement["withheld"],
            "statement": b64encode(raw),
            "statement_signature": b64encode(self.key.sign(STATEMENT_PREFIX, raw)),
            "measurements": [_measurement_json(item) for item in shown],
        }

    def _statement(
        self,
        event: EventRow,
        audience: Audience,
        probes: Sequence[Item],
        controls: Sequence[Item],
        published: set[tuple[str, str]],
        named: set[tuple[str, int]],
    ) -> dict[str, Any]:
        entries = [
            _entry(item, item.ident in published, item.ooni or item.network in named)
            for item in probes
        ]
        entries += [_entry(item, True, True) for item in controls]
        return {
            "format": STATEMENT_FORMAT,
            "collector_key_id": self.key.key_id,
            "issued_at": _iso(self.clock.now()),
            "audience": str(audience),
            "publish_min_volunteers": self.settings.publish_min_volunteers,
            "event": self._event(event, audience, probes, named),
            "measurements": entries,
            "withheld": len(probes) - len(published),
        }

    def _event(
        self,
        event: EventRow,
        audience: Audience,
        probes: Sequence[Item],
        named: set[tuple[str, int]],
    ) -> dict[str, Any]:
        full = audience is Audience.FULL
        step = self.settings.measure_interval

        def when(value: datetime | None) -> str | None:
            # Every public time is rounded down to the measurement interval.
            return _iso(value if full or value is None else floor_time(value, step))

        asns = [int(a) for a in json_list(event.asns)]
        regions = {i.region for i in probes if i.region and (full or i.network in named)}
        return {
            "id": event.id,
            "domain": event.domain,
            "cc": event.cc,
            "asns": asns if full else [a for a in asns if (event.cc, a) in named],
            "regions": sorted(regions),
            "methods": json_list(event.methods),
            "scope": event.scope,
            "state": event.state,
            "started_at": when(event.started_at),
            "detected_at": when(event.detected_at),
            "ended_at": when(event.ended_at),
            "revision": event.revision,
            "rule_version": event.rule_version,
            "forged_pool_version": event.forged_pool_version,
        }


def _entry(item: Item, published: bool, named: bool) -> dict[str, Any]:
    """One measurement in the statement; a withheld one by hash and attribution only."""
    entry: dict[str, Any] = {
        "id": item.row.measurement_id,
        "sha256": item.sha256,
        "role": item.row.role,
        "cc": item.row.cc,
        "asn": item.row.asn if named else None,
        "region": item.region if named else None,
        "network_source": item.row.network_source,
        "published": published,
    }
    if published:
        entry["key_id"] = item.row.key_id
    if item.ooni:
        entry["source"] = "ooni"
    return entry


def _measurement_json(item: Item) -> dict[str, Any]:
    if item.ooni:  # its provenance is OONI's public archive, not a probe's signature
        document = json.loads(item.payload)
        return {
            "id": item.row.measurement_id,
            "source": "ooni",
            "key_id": item.row.key_id,
            "report_id": document.get("report_id"),
            "measurement_uid": document.get("measurement_uid"),
            "payload": b64encode(item.payload),
            "role": item.row.role,
            "cc": item.row.cc,
            "asn": item.row.asn,
            "region": None,
            "network_source": item.row.network_source,
        }
    return {
        "id": item.row.measurement_id,
        "key_id": item.row.key_id,
        "public_key": b64encode(item.public_key),
        "payload": b64encode(item.payload),
        "signature": b64encode(item.row.signature),
        "role": item.row.role,
        "cc": item.row.cc,
        "asn": item.row.asn,
        "region": item.region,
        "network_source": item.row.network_source,
    }


# -- which measurements, and which of them the public sees --------------------------


def gather(session: Session, event: EventRow, ids: list[str]) -> tuple[list[Item], list[Item]]:
    """The event's measurements (in its evidence's order) and the controls they were judged on."""
    if not ids:
        return [], []
    rows = list(
        session.scalars(
            select(MeasurementRow).where(
                MeasurementRow.measurement_id.in_(ids),
                MeasurementRow.domain == event.domain,
                MeasurementRow.cc == event.cc,
                MeasurementRow.role.in_(("probe", "ooni")),
            )
        )
    )
    verdicts = {
        v.measurement_pk: v
        for v in session.scalars(
            select(VerdictRow).where(VerdictRow.measurement_pk.in_([r.id for r in rows]))
        )
    }
    probe_standings = standings(session)
    volunteers = set(map(str, json_list(event.volunteers)))
    chosen = _one_row_per_id(rows, verdicts, probe_standings, volunteers)
    order = {mid: n for n, mid in enumerate(ids)}
    chosen.sort(key=lambda r: (order[r.measurement_id], r.key_id))
    control_ids = sorted(
        {str(c) for r in chosen if r.id in verdicts for c in json_list(verdicts[r.id].controls)}
    )
    controls = list(
        session.scalars(
            select(MeasurementRow)
            .where(
                MeasurementRow.measurement_id.in_(control_ids),
                MeasurementRow.domain == event.domain,
                MeasurementRow.role == "control",
            )
            .order_by(MeasurementRow.started_at, MeasurementRow.key_id)
        )
    ) if control_ids else []  # fmt: skip
    return _items(session, chosen, probe_standings), _items(session, controls, probe_standings)


def _one_row_per_id(
    rows: list[MeasurementRow],
    verdicts: dict[int, VerdictRow],
    probe_standings: dict[str, Standing],
    volunteers: set[str],
) -> list[MeasurementRow]:
    """Of rows sharing an id, those by a volunteer of the event with a blocked verdict
    (all of them if they all are: each is a real, signed measurement)."""

    def score(row: MeasurementRow) -> int:
        standing = probe_standings.get(row.probe_id)
        voter = standing is not None and standing.volunteer in volunteers
        verdict = verdicts.get(row.id)
        return 2 * voter + (verdict is not None and verdict.blocked)

    by_id: dict[str, list[MeasurementRow]] = defaultdict(list)
    for row in rows:
        by_id[row.measurement_id].append(row)
    chosen = []
    for same in by_id.values():
        best = max(score(r) for r in same)
        chosen += [r for r in same if score(r) == best]
    return chosen


def _items(
    session: Session, rows: Iterable[MeasurementRow], probe_standings: dict[str, Standing]
) -> list[Item]:
    rows = list(rows)
    keys = {
        k.key_id: k.public_key
        for k in session.scalars(
            select(ProbeKeyRow).where(ProbeKeyRow.key_id.in_({r.key_id for r in rows}))
        )
    }
    probe_ids = {r.probe_id for r in rows}
    probes = {p.id: p for p in session.scalars(select(ProbeRow).where(ProbeRow.id.in_(probe_ids)))}
    items = []
    for row in rows:
        probe, standing = probes.get(row.probe_id), probe_standings.get(row.probe_id)
        # A control votes for nobody; OONI hides nobody: neither counts toward K.
        control = row.role == "control" or row.source == "ooni"
        items.append(
            Item(
                row=row,
                payload=unpack_payload(row.payload),
                public_key=keys.get(row.key_id, b""),  # OONI's: none (not signed)
                region=standing.counted_region(row.region, row.region_source)
                if standing is not None
                else None,
                volunteer=None if control or standing is None else standing.volunteer,
                counts=standing is not None
                and standing.counts(row.cc, row.asn, row.network_source),
                public_evidence=probe is not None and probe.public_evidence,
            )
        )
    return items


def _volunteers_per_network(items: Iterable[Item]) -> dict[tuple[str, int], set[str]]:
    found: dict[tuple[str, int], set[str]] = defaultdict(set)
    for item in items:
        if item.counts and item.volunteer is not None:
            found[item.network].add(item.volunteer)
    return found


def named_networks(items: Sequence[Item], k: int, audience: Audience) -> set[tuple[str, int]]:
    """Networks a public answer may name: at least *k* volunteers whose votes count."""
    if audience is Audience.FULL:
        return {item.network for item in items}
    return {n for n, who in _volunteers_per_network(items).items() if len(who) >= k}


def publishable(items: Sequence[Item], k: int, audience: Audience) -> set[tuple[str, str]]:
    """The items shown (by ``ident``): all for the operator; for the public, those of
    networks with at least *k* counting volunteers who run with --public-evidence."""
    if audience is Audience.FULL:
        return {item.ident for item in items}
    shown = {item.ident for item in items if item.ooni}  # OONI publishes them itself
    public = [item for item in items if item.public_evidence]
    networks = {n for n, who in _volunteers_per_network(public).items() if len(who) >= k}
    return shown | {item.ident for item in public if item.counts and item.network in networks}
