"""API schemas: what the routes accept and answer (never shared with ORM models)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from collector.services.auth import envelope_from
from probe_agent.protocol.envelope import Envelope

Domain = Annotated[str, StringConstraints(min_length=1, max_length=253)]


class EnvelopeIn(BaseModel):
    """A signed envelope (probe_agent/protocol/envelope.py)."""

    model_config = ConfigDict(extra="forbid")

    key_id: Annotated[str, StringConstraints(min_length=64, max_length=64)]
    payload: Annotated[str, StringConstraints(max_length=4 * 1024 * 1024)]
    signature: Annotated[str, StringConstraints(max_length=200)]

    def envelope(self) -> Envelope:
        """The protocol's envelope, decoded once here for the services: the rest of
        the format (hex key id, base64, signature length) is checked by its one
        definition, with the error codes it has always answered."""
        return envelope_from(self.model_dump())


class BatchIn(BaseModel):
    measurements: list[EnvelopeIn]


class ItemError(BaseModel):
    code: str
    message: str


class ItemOut(BaseModel):
    index: int
    measurement_id: str | None
    status: Literal["accepted", "duplicate", "rejected"]
    error: ItemError | None = None


class BatchOut(BaseModel):
    results: list[ItemOut]
    accepted: int
    duplicates: int
    rejected: int


class EnrollOut(BaseModel):
    probe_id: str
    key_id: str
    status: str
    role: str
    # The collector's own key (/.well-known/blockwatch.json): a probe whose token
    # carried no fingerprint pins this one, and verifies the endpoint lists with it.
    collector_key_id: str | None = None
    collector_public_key: str | None = None


class NetworkOut(BaseModel):
    cc: str
    asn: int
    source: str
    # ISO 3166-2 (CN-HA) when the collector places the probe in a region, and how:
    # geolocated (its city database) or declared (--region; counts once vouched).
    region: str | None = None
    region_source: str | None = None


class TargetOut(BaseModel):
    domain: str
    group: str | None
    kind: str
    # The port to measure it at, when not the probe's own --port: the collector's own
    # names (kind "collector") carry the port they are served on.
    port: int | None = None


class CheckinOut(BaseModel):
    probe_id: str
    status: str
    server_time: datetime
    interval_seconds: float
    retest_spacing_seconds: float
    network: NetworkOut
    targets: list[TargetOut]
    # The address the collector saw the check-in come from (echoed, never stored):
    # the probe scrubs it from its measurements.
    seen_address: str | None = None
    # The collector's other ways in, signed with its key (probe_agent/protocol/endpoints.py).
    endpoints: dict[str, str] | None = None
    # The operator's decoy pool for the SNI control; empty: the probes' own default.
    decoys: list[str] = Field(default_factory=list)


class TargetsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    domains: Annotated[list[Domain], Field(min_length=1, max_length=10_000)]
    group: Annotated[str, StringConstraints(min_length=1, max_length=100)] | None = None
    kind: Literal["primary", "mirror", "alias"] = "primary"


class TargetList(BaseModel):
    data: list[TargetOut]
    count: int


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    uses: int = Field(1, ge=1, le=100_000)
    expires_in: float = Field(86400.0, gt=0, le=366 * 86400.0)
    role: Literal["probe", "control"] = "probe"
    note: Annotated[str, StringConstraints(max_length=200)] | None = None
    # The network the token vouches for (both or neither), and its ISO 3166-2 region.
    cc: Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{2}$")] | None = None
    asn: int | None = Field(None, ge=1, lt=2**32)
    region: Annotated[str, StringConstraints(max_length=16)] | None = None


class TokenOut(BaseModel):
    token: str
    # The token with the collector key's fingerprint prefix: give volunteers this one
    # (the probe then trusts only this collector's key). Added 2026-12-03.
    anchored_token: str | None = None
    uses: int
    expires_at: datetime
    role: str
    token_id: int | None = None
    cc: str | None = None
    asn: int | None = None
    region: str | None = None


class TokenInfo(BaseModel):
    """A token as ``GET /probes/tokens`` lists it (the token itself is never stored)."""

    token_id: int
    role: str
    uses: int
    max_uses: int
    expires_at: datetime
    created_at: datetime
    revoked_at: datetime | None
    note: str | None
    cc: str | None
    asn: int | None
    region: str | None
    probes: int


class TokenList(BaseModel):
    data: list[TokenInfo]
    count: int


class VouchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cc: Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{2}$")]
    asn: int = Field(ge=1, lt=2**32)
    region: Annotated[str, StringConstraints(max_length=16)] | None = None


class ProbeOut(BaseModel):
    probe_id: str
    status: str
    role: str
    key_id: str | None
    cc: str | None
    asn: int | None
    network_source: str | None
    declared_cc: str | None
    declared_asn: int | None
    # Who it votes as, and whether its declared network counts.
    volunteer: str = ""
    token_id: int | None = None
    vouched_cc: str | None = None
    vouched_asn: int | None = None
    region: str | None = None
    declared_vouched: bool = False
    public_evidence: bool = False
    created_at: datetime
    last_checkin_at: datetime | None
    software_version: str | None
    spool_depth: int
    evicted_total: int


class ProbeList(BaseModel):
    data: list[ProbeOut]
    count: int


class RotateOut(BaseModel):
    probe_id: str
    key_id: str
    status: str


class EventOut(BaseModel):
    id: int
    domain: str
    cc: str
    # Public answers list only networks with enough volunteers (collector/core/publication.py);
    # the others are counted in withheld_networks.
    asns: list[int]
    withheld_networks: int = 0
    methods: list[str]
    scope: Literal["national", "regional"]
    state: Literal["open", "closed"]
    started_at: datetime
    detected_at: datetime
    updated_at: datetime
    ended_at: datetime | None
    closed_at: datetime | None
    probes: int
    reporting_probes: int
    volume_collapse_at: datetime | None
    evidence: list[str]
    revision: int
    rule_version: str
    forged_pool_version: str
    evidence_bundle_url: str | None = None  # docs/evidence.md
    history: bool = False  # opened by replaying imported history (ooni import)


class EventList(BaseModel):
    data: list[EventOut]
    count: int


class NetworkStatusOut(BaseModel):
    cc: str
    asn: int | None  # None: the country's networks too small to be named, folded
    state: Literal["ok", "blocked", "down", "unknown"]
    methods: list[str]
    since: datetime
    probes: int  # volunteers; OONI never counted here
    ooni: bool = False  # OONI's measurements vote in this network too ("OONI saw")
    updated_at: datetime


class MirrorOut(BaseModel):
    domain: str
    kind: str
    networks: list[NetworkStatusOut]


class StatusOut(BaseModel):
    domain: str
    group: str | None
    networks: list[NetworkStatusOut]
    events: list[EventOut]
    mirrors: list[MirrorOut]
