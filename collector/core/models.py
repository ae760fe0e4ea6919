"""SQLAlchemy 2 models: the collector's tables (schema changes go through Alembic).

ORM classes end in ``Row`` so that they never share a name with an API schema.
Times are stored as naive UTC and returned as aware UTC (``UTCDateTime``), the
same on SQLite and PostgreSQL. A measurement keeps the exact bytes its probe
signed (zlib-compressed) with the signature and key id: evidence anyone can
verify again later. No table has a column for a probe's address.
"""

from __future__ import annotations

import zlib
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
    true,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# A 4 KiB window rather than zlib's default 32 KiB: the same size for documents of
# a few KB (median 3.1 KB) at a quarter of the CPU (86-106 µs a 3.4 KB document at
# level 1, 25 µs here: most of the cost was setting up the large window's tables).
# Any zlib reader inflates it: its default window covers the smaller one.
_PAYLOAD_WBITS, _PAYLOAD_MEMLEVEL = 12, 6


def pack_payload(payload: bytes) -> bytes:
    """The stored form of a signed payload: zlib, level 1, a 4 KiB window."""
    deflater = zlib.compressobj(1, zlib.DEFLATED, _PAYLOAD_WBITS, _PAYLOAD_MEMLEVEL)
    return deflater.compress(payload) + deflater.flush()


def unpack_payload(stored: bytes) -> bytes:
    """The exact signed bytes back (raises zlib.error on a damaged row)."""
    return zlib.decompress(stored)


class UTCDateTime(TypeDecorator[datetime]):
    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        # Called for every row read (the detector reads hundreds of thousands a pass).
        return None if value is None else value.replace(tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class ProbeRow(Base):
    __tablename__ = "probes"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), index=True)  # active|pending|revoked
    role: Mapped[str] = mapped_column(String(16))  # probe|control
    declared_cc: Mapped[str | None] = mapped_column(String(2))
    declared_asn: Mapped[int | None] = mapped_column(BigInteger)
    declared_region: Mapped[str | None] = mapped_column(String(6))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    approved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_checkin_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_cc: Mapped[str | None] = mapped_column(String(2))
    last_asn: Mapped[int | None] = mapped_column(BigInteger)
    last_network_source: Mapped[str | None] = mapped_column(String(16))
    last_region: Mapped[str | None] = mapped_column(String(6))
    software_version: Mapped[str | None] = mapped_column(String(64))
    spool_depth: Mapped[int] = mapped_column(Integer, default=0)
    evicted_total: Mapped[int] = mapped_column(BigInteger, default=0)
    # The volunteer: every probe enrolled with one token is one (None: its own).
    token_id: Mapped[int | None] = mapped_column(ForeignKey("enrollment_tokens.id"), index=True)
    # The network an operator vouched for (``probes vouch``); a token's counts too.
    vouched_cc: Mapped[str | None] = mapped_column(String(2))
    vouched_asn: Mapped[int | None] = mapped_column(BigInteger)
    region: Mapped[str | None] = mapped_column(String(6))
    # Its measurements may be published in evidence bundles (``run --public-evidence``).
    public_evidence: Mapped[bool] = mapped_column(Boolean, default=False)

    keys: Mapped[list[ProbeKeyRow]] = relationship(back_populates="probe")
    token: Mapped[TokenRow | None] = relationship()


class ProbeKeyRow(Base):
    __tablename__ = "probe_keys"

    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    probe_id: Mapped[str] = mapped_column(ForeignKey("probes.id"), index=True)
    public_key: Mapped[bytes] = mapped_column(LargeBinary(32))
    status: Mapped[str] = mapped_column(String(16))  # active|retired|revoked
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    probe: Mapped[ProbeRow] = relationship(back_populates="keys")


class TokenRow(Base):
    __tablename__ = "enrollment_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    max_uses: Mapped[int] = mapped_column(Integer)
    uses: Mapped[int] = mapped_column(Integer, default=0)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    note: Mapped[str | None] = mapped_column(String(200))
    # The network this token vouches for: its probes' declared network counts.
    vouched_cc: Mapped[str | None] = mapped_column(String(2))
    vouched_asn: Mapped[int | None] = mapped_column(BigInteger)
    region: Mapped[str | None] = mapped_column(String(6))  # ISO 3166-2, e.g. CN-GD
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class TargetGroupRow(Base):
    __tablename__ = "target_groups"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)

    targets: Mapped[list[TargetRow]] = relationship(back_populates="group")


class TargetRow(Base):
    __tablename__ = "targets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    domain: Mapped[str] = mapped_column(String(253), unique=True)
    group_id: Mapped[int | None] = mapped_column(ForeignKey("target_groups.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16), default="primary")  # primary|mirror|alias
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    source: Mapped[str | None] = mapped_column(String(200))
    added_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Removed targets stay for the spool's life: their measurements are still accepted.
    removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    group: Mapped[TargetGroupRow | None] = relationship(back_populates="targets")


class MeasurementRow(Base):
    __tablename__ = "measurements"
    __table_args__ = (
        # An id is unique per signing key: nobody can squat another probe's id.
        UniqueConstraint("key_id", "measurement_id", name="uq_measurements_key_measurement"),
        Index("ix_measurements_domain_started", "domain", "started_at"),
        # The detector's controls (collector.detection.passes): only control rows,
        # so that finding a domain's controls never walks its probe measurements.
        Index(
            "ix_measurements_controls",
            "domain",
            "started_at",
            postgresql_where=text("role = 'control'"),
            sqlite_where=text("role = 'control'"),
        ),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    measurement_id: Mapped[str] = mapped_column(String(64), index=True)
    probe_id: Mapped[str] = mapped_column(ForeignKey("probes.id"), index=True)
    key_id: Mapped[str] = mapped_column(String(64))
    domain: Mapped[str] = mapped_column(String(253))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    cc: Mapped[str] = mapped_column(String(2))
    asn: Mapped[int] = mapped_column(BigInteger)
    network_source: Mapped[str] = mapped_column(String(16))
    # ISO 3166-2 (CN-HA), and how it is known: geolocated | declared (migration 0010).
    region: Mapped[str | None] = mapped_column(String(6))
    region_source: Mapped[str | None] = mapped_column(String(10))
    role: Mapped[str] = mapped_column(String(16))
    hints: Mapped[str] = mapped_column(Text)  # JSON list
    payload: Mapped[bytes] = mapped_column(LargeBinary)  # zlib of the exact signed bytes
    signature: Mapped[bytes] = mapped_column(LargeBinary(64))  # empty for OONI's
    # blockwatch (a probe's signed envelope) | ooni (OONI's archive: report_id, uid)
    source: Mapped[str] = mapped_column(
        String(16), default="blockwatch", server_default="blockwatch"
    )


class AnalysisQueueRow(Base):
    """Measurements waiting for a verdict (a control to match, or the next pass).

    Filled at ingest, emptied by the detector's pass: the pass reads what is new,
    never the history.
    """

    __tablename__ = "analysis_queue"

    measurement_pk: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"),
        ForeignKey("measurements.id", ondelete="CASCADE"),
        primary_key=True,
    )
    not_before: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class VerdictRow(Base):
    """One measurement's verdict (collector.analysis), with the control it was matched to."""

    __tablename__ = "verdicts"
    __table_args__ = (
        # The detector's votes: every country of a domain within the window. The
        # time is the second column so that the window bounds the scan whatever
        # the history (docs/architecture.md, "Cost of a pass").
        Index("ix_verdicts_domain_started", "domain", "started_at"),
        # ... and the window alone, when a pass touches most domains: rows are stored
        # in about time order, so PostgreSQL reads the window's tail of the table
        # instead of scanning it all (which it prefers over the index above once
        # the window holds more than a few percent of the rows).
        Index("ix_verdicts_started", "started_at"),
        # SNI triggers of a probe (residual blocking): only the rows that have any.
        Index(
            "ix_verdicts_probe_triggers",
            "probe_id",
            "started_at",
            postgresql_where=text("triggers <> '[]'"),
            sqlite_where=text("triggers <> '[]'"),
        ),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    measurement_pk: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"),
        ForeignKey("measurements.id", ondelete="CASCADE"),
        unique=True,
    )
    measurement_id: Mapped[str] = mapped_column(String(64))
    probe_id: Mapped[str] = mapped_column(String(32))
    domain: Mapped[str] = mapped_column(String(253))
    cc: Mapped[str] = mapped_column(String(2))
    asn: Mapped[int] = mapped_column(BigInteger)
    # geolocated | declared | unknown: a declared network counts only when vouched.
    network_source: Mapped[str] = mapped_column(String(16), default="unknown")
    # ISO 3166-2 (CN-HA), and how it is known: geolocated | declared (migration 0010).
    region: Mapped[str | None] = mapped_column(String(6))
    region_source: Mapped[str | None] = mapped_column(String(10))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    flags: Mapped[str] = mapped_column(String(64))  # sorted, comma-separated
    blocked: Mapped[bool] = mapped_column(Boolean)
    reasons: Mapped[str] = mapped_column(Text)  # JSON list of rule ids
    triggers: Mapped[str] = mapped_column(Text, default="[]")  # JSON [[ip, port, at], ...]
    controls: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of measurement ids
    rule_version: Mapped[str] = mapped_column(String(32))
    analyzed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class EventRow(Base):
    """A block event: one per (domain, country) while it lasts."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_domain_cc_state", "domain", "cc", "state"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    domain: Mapped[str] = mapped_column(String(253))
    cc: Mapped[str] = mapped_column(String(2))
    state: Mapped[str] = mapped_column(String(8), index=True)  # open|closed
    scope: Mapped[str] = mapped_column(String(16))  # national|regional
    asns: Mapped[str] = mapped_column(Text)  # JSON list
    methods: Mapped[str] = mapped_column(Text)  # JSON list
    # False while the methods are stand-ins (no method agreed yet): replaced, not grown.
    methods_agreed: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    # Opened by replaying history (``ooni import``: measurements older than the window),
    # not by a live pass; it sent no alert unless it was still going on at the end.
    history: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    regions: Mapped[str] = mapped_column(Text, default="[]", server_default="[]")
    volunteers: Mapped[str] = mapped_column(Text)  # JSON list of volunteer ids, never published
    evidence: Mapped[str] = mapped_column(Text)  # JSON list of measurement ids
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    detected_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_blocked_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reporting_probes: Mapped[int] = mapped_column(Integer, default=0)
    volume_collapse_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revision: Mapped[int] = mapped_column(Integer, default=1)
    rule_version: Mapped[str] = mapped_column(String(32))
    forged_pool_version: Mapped[str] = mapped_column(String(64))


class EventChangeRow(Base):
    """Each change of an event (opened, updated, closed) with its snapshot: what alerts send."""

    __tablename__ = "event_changes"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    event_id: Mapped[int] = mapped_column(ForeignKey("events.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # opened|updated|closed
    revision: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    snapshot: Mapped[str] = mapped_column(Text)  # JSON: the event as /events shows it


class DetectorStateRow(Base):
    """The detector's state per (domain, country): what the pure state machine reads back."""

    __tablename__ = "detector_states"

    domain: Mapped[str] = mapped_column(String(253), primary_key=True)
    cc: Mapped[str] = mapped_column(String(2), primary_key=True)
    event_id: Mapped[int | None] = mapped_column(ForeignKey("events.id"))
    active_probes: Mapped[int] = mapped_column(Integer, default=0)
    peak_probes: Mapped[int] = mapped_column(Integer, default=0)
    collapsed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_vote_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    evaluated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class NetworkStateRow(Base):
    """The current state of a domain in one network (country, ASN): /status/{domain}."""

    __tablename__ = "network_states"

    domain: Mapped[str] = mapped_column(String(253), primary_key=True)
    cc: Mapped[str] = mapped_column(String(2), primary_key=True)
    asn: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    state: Mapped[str] = mapped_column(String(8))  # ok|blocked|down|unknown
    methods: Mapped[str] = mapped_column(Text, default="[]")
    since: Mapped[datetime] = mapped_column(UTCDateTime)
    # Volunteers voting here (OONI not counted: it hides nobody, k-anonymity), and
    # whether OONI's measurements vote here too ("OONI saw").
    probes: Mapped[int] = mapped_column(Integer, default=0)
    ooni: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class LeaseRow(Base):
    """A named lease: which collector process runs a singleton loop (control, detector)."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ServiceKeyRow(Base):
    """The collector's own signing keys (the control vantage signs what it measures)."""

    __tablename__ = "service_keys"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    private_key: Mapped[bytes] = mapped_column(LargeBinary(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SubscriptionRow(Base):
    """Who is told about a domain's (or a group's) block events, and how."""

    __tablename__ = "subscriptions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    domain: Mapped[str | None] = mapped_column(String(253), index=True)
    group_name: Mapped[str | None] = mapped_column(String(100), index=True)
    channel: Mapped[str] = mapped_column(String(16))
    # Channel settings (URL, room, topic...), JSON: may hold secrets (tokens), never logged.
    # settings, secret and previous_secret are sealed (bws1:..., collector/core/secrets.py).
    settings: Mapped[str] = mapped_column(Text)
    secret: Mapped[str | None] = mapped_column(Text)  # whsec_... (webhook)
    # After rotate-secret, the old secret still signs until then (both signatures sent).
    previous_secret: Mapped[str | None] = mapped_column(Text)
    previous_secret_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    state: Mapped[str] = mapped_column(
        String(16), index=True
    )  # pending|active|paused|failing|disabled
    challenge: Mapped[str | None] = mapped_column(String(64))  # to publish (TXT or file)
    manage_hash: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(String(200))
    last_delivery_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The language of its messages (collector/core/i18n.py): the one asked for, else
    # the instance's own (``languages`` of /api/v2/instance, learned at verification).
    language: Mapped[str | None] = mapped_column(String(16))
    instance_language: Mapped[str | None] = mapped_column(String(16))


class DeliveryRow(Base):
    """The outbox: one message for one subscription about one event change."""

    __tablename__ = "deliveries"
    __table_args__ = (Index("ix_deliveries_due", "state", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    subscription_id: Mapped[str] = mapped_column(
        ForeignKey("subscriptions.id", ondelete="CASCADE"), index=True
    )
    event_id: Mapped[int] = mapped_column(Integer, index=True)
    kind: Mapped[str] = mapped_column(String(16))  # opened|updated|closed
    message_id: Mapped[str] = mapped_column(String(64), unique=True)  # webhook-id
    payload: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16))  # pending|sending|delivered|dead
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class CursorRow(Base):
    """A named position in an append-only table (the alerts' place in event_changes)."""

    __tablename__ = "cursors"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger, default=0)
