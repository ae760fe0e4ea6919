"""Probe identity: enrollment, check-in, key rotation, and their administration.

Every probe request is an envelope, decoded by the route. The signature is
checked (``collector.services.auth``) against the key the collector holds (or,
for enrollment, the key the document carries) before anything is written; only
then is the document parsed and acted on. Tokens are
stored as SHA-256 hashes and consumed with a conditional UPDATE, so two probes
racing for the last use of a token cannot both win.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from collector.core.clock import Clock
from collector.core.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    RateLimited,
    Unauthorized,
    Unprocessable,
)
from collector.core.models import ProbeKeyRow, ProbeRow, TargetRow, TokenRow
from collector.core.settings import CollectorSettings
from collector.services import auth
from collector.services.auth import Authenticated, check_signature, check_window, parse_document
from collector.services.documents import (
    CheckinDocument,
    EnrollDocument,
    RotateDocument,
    SignedDocument,
    parse_public_key,
)
from collector.services.geo import Network
from collector.services.ingest import NetworkOf
from collector.services.regions import REGION_RE, region_code
from collector.services.volunteers import reevaluate, window_start
from probe_agent.protocol.envelope import Envelope, EnvelopeError, Purpose, fingerprint

TOKEN_PREFIX = "bwt_"  # noqa: S105 (a prefix, not a secret)
ANCHOR_HEX = 32  # the collector key's fingerprint prefix an anchored token carries


def anchored(token: str, collector_key_id: str) -> str:
    """``bwt_<secret>.<the collector key's fingerprint, 128 bits>``: what volunteers get.
    The probe sends the token and trusts only a collector key with that fingerprint
    (probe_agent/state/reach.py); the collector ignores the part after the dot."""
    return f"{token}.{collector_key_id[:ANCHOR_HEX]}"


ROLES = ("probe", "control")
Signed = TypeVar("Signed", bound=SignedDocument)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_probe_id() -> str:
    return "p_" + secrets.token_hex(8)


class ProbeService:
    def __init__(self, settings: CollectorSettings, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock

    # -- tokens ---------------------------------------------------------------

    def create_token(
        self,
        session: Session,
        *,
        uses: int = 1,
        expires_in: float = 86400.0,
        role: str = "probe",
        note: str | None = None,
        cc: str | None = None,
        asn: int | None = None,
        region: str | None = None,
    ) -> tuple[str, TokenRow]:
        """A new token: one volunteer, however many probes enroll with it. With *cc*
        and *asn* it vouches for that network: its probes' declared network counts."""
        if role not in ROLES:
            raise Unprocessable(f"role must be one of {ROLES}")
        if uses < 1 or expires_in <= 0:
            raise Unprocessable("uses must be >= 1 and expires_in > 0")
        vouched_cc, vouched_asn = _network(cc, asn)
        token = TOKEN_PREFIX + secrets.token_urlsafe(24)
        row = TokenRow(
            token_hash=hash_token(token),
            role=role,
            max_uses=uses,
            uses=0,
            expires_at=self.clock.now() + timedelta(seconds=expires_in),
            note=note,
            vouched_cc=vouched_cc,
            vouched_asn=vouched_asn,
            region=_region(region, vouched_cc),
        )
        session.add(row)
        session.flush()
        return token, row

    def tokens(self, session: Session) -> list[TokenRow]:
        return list(session.scalars(select(TokenRow).order_by(TokenRow.id)))

    def revoke_token(self, session: Session, token_id: int) -> TokenRow:
        """End a token: nobody enrolls with it, and its probes' votes stop counting at
        the next pass (their keys stay valid: an operator revokes probes one by one)."""
        row = session.get(TokenRow, token_id)
        if row is None:
            raise NotFound(f"no token {token_id}")
        if row.revoked_at is None:
            row.revoked_at = self.clock.now()
            probes = session.scalars(select(ProbeRow.id).where(ProbeRow.token_id == row.id))
            self._reevaluate(session, list(probes))
        return row

    def _consume_token(self, session: Session, token: str, role: str) -> TokenRow:
        # A probe older than anchored tokens sends the collector key's prefix too.
        token = token.partition(".")[0]
        row = session.scalar(select(TokenRow).where(TokenRow.token_hash == hash_token(token)))
        if row is None or row.expires_at <= self.clock.now() or row.revoked_at is not None:
            raise Unauthorized("unknown, expired or revoked enrollment token", "err_invalid_token")
        if row.role != role:
            raise Forbidden(f"this token enrolls role {row.role!r}, not {role!r}")
        taken = session.execute(
            update(TokenRow)
            .where(TokenRow.id == row.id, TokenRow.uses < TokenRow.max_uses)
            .values(uses=TokenRow.uses + 1)
        )
        if taken.rowcount != 1:  # type: ignore[attr-defined]
            raise Unauthorized("this enrollment token is used up", "err_invalid_token")
        return row

    # -- enrollment -----------------------------------------------------------

    def enroll(self, session: Session, envelope: Envelope) -> tuple[ProbeRow, ProbeKeyRow, bool]:
        # The document names its own key: parse just enough to find it, verify, then trust.
        try:
            claimed = envelope.payload_json()
            public_key = parse_public_key(str(claimed.get("public_key", "")))
        except (EnvelopeError, ValueError, AttributeError) as exc:
            raise Unprocessable(f"enrollment payload: {exc}", "err_malformed_payload") from exc
        if fingerprint(public_key) != envelope.key_id:
            raise Unauthorized("the key id is not this key's fingerprint", "err_bad_signature")
        check_signature(envelope, Purpose.ENROLL, public_key)
        doc = parse_document(envelope, EnrollDocument)
        check_window(doc, self.settings, self.clock.now(), self.settings.max_request_age)
        existing = session.get(ProbeKeyRow, envelope.key_id)
        if existing is not None:
            return existing.probe, existing, False
        token: TokenRow | None = None
        if doc.token:
            token = self._consume_token(session, doc.token, doc.role)
            status = "active"
        elif doc.role == "control":
            raise Forbidden("a control probe needs an enrollment token issued for that role")
        else:
            status = "active" if self.settings.open_enrollment else "pending"
            if (
                status == "pending"
                and self._pending(session) >= self.settings.max_pending_enrollments
            ):
                # Unauthenticated, so bounded: an operator approves from a queue they can read.
                raise RateLimited(
                    "the enrollment queue is full; ask the operator for a token", 3600
                )
        now = self.clock.now()
        probe = ProbeRow(
            id=new_probe_id(),
            status=status,
            role=doc.role,
            declared_cc=doc.declared.cc.upper() if doc.declared else None,
            declared_asn=doc.declared.asn if doc.declared else None,
            declared_region=region_code(doc.region),
            created_at=now,
            approved_at=now if status == "active" else None,
            software_version=doc.software.version[:64],
            spool_depth=0,
            evicted_total=0,
            token_id=token.id if token is not None else None,
            region=token.region if token is not None else None,
        )
        key = ProbeKeyRow(
            key_id=envelope.key_id,
            probe=probe,
            public_key=public_key,
            status="active",
            created_at=now,
        )
        session.add_all([probe, key])
        session.flush()
        return probe, key, True

    # -- authentication -------------------------------------------------------

    def authenticate(
        self, session: Session, envelope: Envelope, purpose: Purpose, model: type[Signed]
    ) -> tuple[Authenticated, Signed]:
        key = session.get(ProbeKeyRow, envelope.key_id)
        return auth.authenticate(envelope, key, purpose, model, self.settings, self.clock.now())

    # -- check-in -------------------------------------------------------------

    def checkin(
        self,
        session: Session,
        envelope: Envelope,
        network_of: NetworkOf,
        limit: Callable[[str], None] | None = None,
    ) -> tuple[ProbeRow, Network, list[TargetRow]]:
        """*network_of(declared, via_proxy) -> Network* geolocates the caller, then forgets it;
        *limit(key_id)* (the rate limiter) is called once the signature verified."""
        signer, doc = self.authenticate(session, envelope, Purpose.CHECKIN, CheckinDocument)
        if limit is not None:
            limit(signer.key.key_id)
        declared = (doc.declared.cc.upper(), doc.declared.asn) if doc.declared else None
        network = network_of(declared, doc.via_proxy, doc.region)
        probe = signer.probe
        probe.last_checkin_at = self.clock.now()
        probe.last_cc, probe.last_asn = network.cc, network.asn
        probe.last_network_source = str(network.source)
        probe.last_region = network.region
        probe.declared_region = region_code(doc.region)
        probe.software_version = doc.software.version[:64]
        probe.spool_depth = int(doc.spool.get("depth", 0))
        probe.evicted_total = max(probe.evicted_total, int(doc.spool.get("evicted", 0)))
        probe.public_evidence = doc.public_evidence
        if declared is not None:
            probe.declared_cc, probe.declared_asn = declared
        targets = list(
            session.scalars(
                select(TargetRow).where(TargetRow.enabled.is_(True)).order_by(TargetRow.domain)
            )
        )
        return probe, network, targets

    # -- rotation -------------------------------------------------------------

    def rotate(self, session: Session, envelope: Envelope) -> tuple[ProbeRow, ProbeKeyRow]:
        signer, doc = self.authenticate(session, envelope, Purpose.ROTATE, RotateDocument)
        new_key = parse_public_key(doc.new_public_key)
        try:
            new_signature = base64.b64decode(doc.new_key_signature, validate=True)
        except ValueError as exc:
            raise BadRequest("new_key_signature is not base64", "err_malformed_envelope") from exc
        # The new key must agree too: it signs the old key id.
        proof = Envelope(fingerprint(new_key), envelope.key_id.encode(), new_signature)
        check_signature(proof, Purpose.ROTATE, new_key)
        if session.get(ProbeKeyRow, proof.key_id) is not None:
            raise Conflict("that key is already enrolled", "err_conflict")
        now = self.clock.now()
        signer.key.status, signer.key.retired_at = "retired", now
        key = ProbeKeyRow(
            key_id=proof.key_id,
            probe_id=signer.probe.id,
            public_key=new_key,
            status="active",
            created_at=now,
        )
        session.add(key)
        session.flush()
        return signer.probe, key

    # -- administration -------------------------------------------------------

    def get(self, session: Session, probe_id: str) -> ProbeRow:
        probe = session.get(ProbeRow, probe_id)
        if probe is None:
            raise NotFound(f"no probe {probe_id!r}")
        return probe

    def approve(self, session: Session, probe_id: str) -> ProbeRow:
        probe = self.get(session, probe_id)
        if probe.status == "revoked":
            raise Forbidden("a revoked probe cannot be approved", "err_revoked_key")
        if probe.status == "pending":
            probe.status, probe.approved_at = "active", self.clock.now()
        return probe

    def revoke(self, session: Session, probe_id: str) -> ProbeRow:
        probe = self.get(session, probe_id)
        probe.status, probe.revoked_at = "revoked", self.clock.now()
        for key in probe.keys:
            key.status = "revoked"
        self._reevaluate(session, [probe.id])
        return probe

    def _pending(self, session: Session) -> int:
        return session.scalar(select(func.count()).where(ProbeRow.status == "pending")) or 0

    def vouch(
        self, session: Session, probe_id: str, cc: str, asn: int, region: str | None = None
    ) -> ProbeRow:
        """An operator vouches for the network a probe declares (one enrolled without
        a token, or one whose token names no network)."""
        probe = self.get(session, probe_id)
        probe.vouched_cc, probe.vouched_asn = _network(cc, asn)
        probe.region = _region(region, probe.vouched_cc) or probe.region
        self._reevaluate(session, [probe.id])
        return probe

    def _reevaluate(self, session: Session, probe_ids: list[str]) -> None:
        since = window_start(self.clock.now(), self.settings.window_seconds)
        reevaluate(session, probe_ids, since)

    def all(self, session: Session) -> list[ProbeRow]:
        return list(session.scalars(select(ProbeRow).order_by(ProbeRow.created_at)))


def _network(cc: str | None, asn: int | None) -> tuple[str | None, int | None]:
    """A vouched network: both a country and an ASN, or neither."""
    if (cc is None) != (asn is None):
        raise Unprocessable("a vouched network needs both a country (--cc) and an ASN (--asn)")
    if cc is None or asn is None:
        return None, None
    if not re.fullmatch(r"[A-Za-z]{2}", cc):
        raise Unprocessable(f"country {cc!r}: expected two letters (ISO 3166-1 alpha-2)")
    if not 1 <= asn < 2**32:
        raise Unprocessable(f"ASN {asn}: expected 1 to 4294967295")
    return cc.upper(), asn


def _region(region: str | None, cc: str | None) -> str | None:
    """An ISO 3166-2 subdivision code (CN-GD), inside the vouched country if any."""
    if region is None:
        return None
    code = region.strip().upper()
    if not REGION_RE.match(code):
        raise Unprocessable(f"region {region!r}: expected an ISO 3166-2 code such as CN-GD")
    if region_code(code) is None:
        raise Unprocessable(f"region {code}: ISO 3166-2 knows no such subdivision")
    if cc is not None and not code.startswith(cc + "-"):
        raise Unprocessable(f"region {code} is not in {cc}")
    return code
