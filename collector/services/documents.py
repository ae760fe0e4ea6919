"""What probes sign: the documents inside envelopes, validated after the signature.

The collector verifies an envelope's signature over the exact bytes first, then
parses those bytes with these models. Strings and lists are bounded, so that a
valid signature over junk still cannot make the collector store junk.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from probe_agent.protocol.envelope import PUBLIC_KEY_BYTES
from probe_agent.protocol.errors import InvalidDomainError
from probe_agent.protocol.inputs import normalize_domain

ShortText = Annotated[str, StringConstraints(max_length=200)]
# Fields a newer probe may add are kept as signed, within bounds: so many, so large.
MAX_EXTRA_FIELDS = 16
MAX_EXTRA_BYTES = 8 * 1024
MAX_STEP_FIELDS = 64  # keys of one DNS, TCP, TLS or HTTP step
HintName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]{1,64}$")]
CountryCode = Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{2}$")]
# An ISO 3166-2 subdivision code's shape (CN-HA); one ISO does not know is ignored.
RegionText = Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{2}-[A-Za-z0-9]{1,3}$")]


def parse_public_key(text: str) -> bytes:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise ValueError("public_key must be base64") from exc
    if len(raw) != PUBLIC_KEY_BYTES:
        raise ValueError("public_key must be a 32-byte Ed25519 key")
    return raw


def aware_utc(value: datetime) -> datetime:
    """RFC 3339 times must carry their zone; stored and compared in UTC."""
    if value.tzinfo is None:
        raise ValueError("a time must carry a time zone (RFC 3339, UTC)")
    return value.astimezone(UTC)


def public_key_text(value: str) -> str:
    parse_public_key(value)
    return value


UTCTime = Annotated[datetime, AfterValidator(aware_utc)]
PublicKeyText = Annotated[str, AfterValidator(public_key_text)]


class Declared(BaseModel):
    """A network the volunteer declares (used only when geolocation is impossible)."""

    model_config = ConfigDict(extra="ignore")

    cc: CountryCode
    asn: int = Field(ge=1, lt=2**32)


class Software(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: ShortText = "blockwatch-probe"
    version: ShortText = ""


class SignedDocument(BaseModel):
    model_config = ConfigDict(extra="ignore")

    signed_at: UTCTime


class EnrollDocument(SignedDocument):
    public_key: PublicKeyText
    token: Annotated[str, StringConstraints(max_length=100)] | None = None
    role: Annotated[str, StringConstraints(pattern=r"^(probe|control)$")] = "probe"
    declared: Declared | None = None
    region: RegionText | None = None
    software: Software = Software()


class CheckinDocument(SignedDocument):
    declared: Declared | None = None
    region: RegionText | None = None
    via_proxy: bool = False
    # The volunteer lets its measurements appear in public evidence (`run --public-evidence`).
    public_evidence: bool = False
    software: Software = Software()
    spool: dict[str, Annotated[int, Field(ge=0, lt=2**53)]] = Field(default_factory=dict)


class RotateDocument(SignedDocument):
    new_public_key: PublicKeyText
    new_key_signature: str


class MeasurementBody(BaseModel):
    """The fields of a measurement the collector indexes; the rest is kept as signed."""

    model_config = ConfigDict(extra="allow")

    measurement_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9-]{8,64}$")]
    domain: Annotated[str, StringConstraints(max_length=253)]
    started_at: UTCTime
    hints: list[HintName] = Field(default_factory=list, max_length=32)
    dns: list[dict[str, Any]] = Field(default_factory=list, max_length=256)
    tcp: list[dict[str, Any]] = Field(default_factory=list, max_length=256)
    tls: list[dict[str, Any]] = Field(default_factory=list, max_length=256)
    http: list[dict[str, Any]] = Field(default_factory=list, max_length=256)

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        try:
            return normalize_domain(value)
        except InvalidDomainError as exc:
            raise ValueError(str(exc)) from exc

    @field_validator("dns", "tcp", "tls", "http")
    @classmethod
    def _steps(cls, steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for step in steps:
            if len(step) > MAX_STEP_FIELDS:
                raise ValueError(f"a step has more than {MAX_STEP_FIELDS} fields")
        return steps

    @model_validator(mode="after")
    def _bounded_extra(self) -> MeasurementBody:
        extra = self.model_extra or {}
        if len(extra) > MAX_EXTRA_FIELDS:
            raise ValueError(f"more than {MAX_EXTRA_FIELDS} fields this collector does not know")
        for name, value in extra.items():
            if len(name) > 64 or len(json.dumps(value)) > MAX_EXTRA_BYTES:
                raise ValueError(f"unknown field {name[:64]!r} is over {MAX_EXTRA_BYTES} bytes")
        return self


class MeasurementDocument(SignedDocument):
    measurement: MeasurementBody
    declared: Declared | None = None
    region: RegionText | None = None  # run --region: ISO 3166-2, counts once vouched
    via_proxy: bool = False
