"""Evidence bundles: their format and their verification, offline, by anyone.

Where this sits in the data flow: after a block event. The collector answers
``GET /api/v1/events/{id}/evidence`` with a bundle (collector.services.evidence
builds it; docs/evidence.md describes it field by field): the measurements,
each the exact bytes its probe signed with the probe's signature and public
key, and a *statement* the collector signs with its own key, which says what
the probes' signatures cannot: which event the measurements are evidence of,
and which network (country, ASN, region) the collector attributed each one to.
``blockwatch-probe verify`` (probe_agent.cli.verify) runs ``verify_bundle``;
it needs nothing but this package and, to anchor the collector's key, its
fingerprint (``/.well-known/blockwatch.json``).

What is checked: the collector key against its key id and the fingerprint
given; the statement's signature; each measurement's key id (SHA-256 of its
public key), its signature (as the envelope's, ``envelope.verify``), that its
payload's SHA-256 and key id are listed in the statement with the same
attribution the bundle shows, and that the signed document names the event's
domain and the measurement's id; that every measurement the statement says is
published is in the bundle, and the withheld count agrees. An OONI measurement
(``"source": "ooni"``, imported from OONI's public archive) is signed by no
probe: its bytes' SHA-256 and attribution are checked against the statement,
and its ``report_id``, ``measurement_uid`` and measured domain against its
payload; the archive itself is the provenance. Malformed input is reported as a
failed check, never raised.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from probe_agent.protocol.envelope import (
    ENVELOPE_VERSION,
    PUBLIC_KEY_BYTES,
    Envelope,
    EnvelopeError,
    Purpose,
    b64_field,
    fingerprint,
    verify,
)
from probe_agent.protocol.messages import N_, Message, Translate, untranslated

FORMAT = "blockwatch-evidence/1"
STATEMENT_FORMAT = "blockwatch-evidence-statement/1"
# The collector signs prefix + statement (domain separation, as the probes' envelopes).
STATEMENT_PREFIX = f"blockwatch/v{ENVELOPE_VERSION}/evidence\n".encode()
WELL_KNOWN_PATH = "/.well-known/blockwatch.json"
ATTRIBUTION = ("cc", "asn", "network_source")
OONI_SOURCE = "ooni"  # an OONI measurement's source, and its key id in the statement


class BundleError(ValueError):
    """One field of a bundle is missing or malformed (its message: a ``Message``)."""


@dataclass(frozen=True, slots=True)
class Check:
    """One verified thing (the collector key, the statement, a measurement): a line.

    *subject* and *detail* are English (``Message``s, which ``line`` translates)."""

    ok: bool
    subject: str
    detail: str

    def line(self, gettext: Translate = untranslated) -> str:
        # One line of `verify`: a check that passed (ok) or failed (FAIL), what was
        # checked, how it went; both verdicts take as many columns.
        if self.ok:
            # TRANSLATORS: the verdict takes as many columns as in "FAIL  ...".
            template = N_("ok    %(subject)s: %(detail)s")
        else:
            # TRANSLATORS: the verdict takes as many columns as in "ok    ...".
            template = N_("FAIL  %(subject)s: %(detail)s")
        return Message(template, subject=self.subject, detail=self.detail).render(gettext)


@dataclass
class Verification:
    checks: list[Check] = field(default_factory=list)
    anchored: bool = False
    measurements: int = 0
    valid_measurements: int = 0
    withheld: int = 0

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def summary(self, gettext: Translate = untranslated) -> str:
        verdict = N_("valid") if self.ok else N_("INVALID")
        anchor = N_("anchored") if self.anchored else N_("NOT anchored (no --collector-key)")
        return Message(
            N_(
                "%(verdict)s: %(valid)s of %(total)s measurements valid, %(withheld)s withheld, "
                "collector key %(anchor)s"
            ),
            verdict=Message(verdict),
            valid=self.valid_measurements,
            total=self.measurements,
            withheld=self.withheld,
            anchor=Message(anchor),
        ).render(gettext)


def canonical_key_id(text: str) -> str | None:
    """*text* as a key id (64 hex digits, any case), or None when it is not one."""
    value = text.strip().lower()
    if len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value
    return None


def key_id_of_well_known(document: Any) -> str:
    """The collector key id a saved ``/.well-known/blockwatch.json`` publishes."""
    if not isinstance(document, dict):
        raise BundleError(Message(N_("%(path)s is a JSON object"), path=WELL_KNOWN_PATH))
    public = _b64(document, "public_key")
    key_id = canonical_key_id(str(document.get("collector_key_id", "")))
    if len(public) != PUBLIC_KEY_BYTES or key_id != fingerprint(public):
        raise BundleError(Message(N_("its collector_key_id is not the SHA-256 of its public_key")))
    return key_id


def verify_bundle(bundle: Any, expected_key_id: str | None) -> Verification:
    """Check everything a bundle says (the module's docstring lists what)."""
    result = Verification()
    try:
        collector_key = _collector_key(bundle)
    except BundleError as exc:
        result.checks.append(Check(False, Message(N_("bundle")), _reason(exc)))
        return result
    result.checks.append(_anchor(collector_key, expected_key_id, result))
    statement, check = _statement(bundle, collector_key)
    result.checks.append(check)
    entries = _entries(statement)
    seen: set[tuple[str, str]] = set()
    items = bundle.get("measurements")
    for index, item in enumerate(items if isinstance(items, list) else []):
        result.measurements += 1
        check = _measurement(index, item, entries, statement, seen)
        result.valid_measurements += check.ok
        result.checks.append(check)
    if not isinstance(items, list):
        problem = Message(N_("measurements is not a list"))
        result.checks.append(Check(False, Message(N_("bundle")), problem))
    result.checks.extend(_completeness(bundle, entries, seen, result))
    return result


def _b64(data: dict[str, Any], name: str) -> bytes:
    return b64_field(data, name, BundleError)


def _reason(error: Exception) -> str:
    """An error's message, kept translatable when it is a ``Message``."""
    return error.args[0] if len(error.args) == 1 and isinstance(error.args[0], str) else str(error)


def _collector_key(bundle: Any) -> bytes:
    if not isinstance(bundle, dict):
        raise BundleError(Message(N_("a bundle is a JSON object")))
    if bundle.get("format") != FORMAT:
        raise BundleError(
            Message(
                N_("format is %(found)r, not %(format)r"), found=bundle.get("format"), format=FORMAT
            )
        )
    public = _b64(bundle, "collector_public_key")
    if len(public) != PUBLIC_KEY_BYTES:
        raise BundleError(Message(N_("collector_public_key is not 32 bytes")))
    if bundle.get("collector_key_id") != fingerprint(public):
        raise BundleError(
            Message(N_("collector_key_id is not the SHA-256 of collector_public_key"))
        )
    return public


def _anchor(public: bytes, expected: str | None, result: Verification) -> Check:
    key_id = fingerprint(public)
    subject = Message(N_("collector key %(key_id)s"), key_id=key_id)
    if expected is None:
        return Check(
            True,
            subject,
            Message(
                N_(
                    "not anchored: anyone could have made this key; compare it with the "
                    "collector's %(path)s (--collector-key)"
                ),
                path=WELL_KNOWN_PATH,
            ),
        )
    result.anchored = key_id == expected
    if result.anchored:
        return Check(True, subject, Message(N_("the collector's (fingerprint matches)")))
    return Check(
        False,
        subject,
        Message(N_("not the collector's (%(expected)s expected)"), expected=expected),
    )


def _statement(bundle: dict[str, Any], public: bytes) -> tuple[dict[str, Any], Check]:
    """The statement (parsed even when its signature fails, to check the rest against)."""
    subject = Message(N_("statement"))
    try:
        raw, signature = _b64(bundle, "statement"), _b64(bundle, "statement_signature")
    except BundleError as exc:
        return {}, Check(False, subject, _reason(exc))
    try:
        parsed = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        parsed = None
    statement = parsed if isinstance(parsed, dict) else {}
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, STATEMENT_PREFIX + raw)
    except InvalidSignature:
        unsigned = Message(N_("the collector's signature does not verify"))
        return statement, Check(False, subject, unsigned)
    problem = _statement_problem(bundle, statement, public)
    if problem:
        return statement, Check(False, subject, problem)
    event = statement["event"]
    return statement, Check(
        True,
        subject,
        Message(
            N_(
                "signed by the collector: event %(event)s, %(domain)s in %(cc)s, methods "
                "%(methods)s, %(audience)s bundle issued %(issued_at)s"
            ),
            event=event.get("id"),
            domain=event.get("domain"),
            cc=event.get("cc"),
            methods=",".join(map(str, event.get("methods") or [])) or "-",
            audience=statement.get("audience"),
            issued_at=statement.get("issued_at"),
        ),
    )


def _statement_problem(bundle: dict[str, Any], statement: dict[str, Any], public: bytes) -> str:
    if statement.get("format") != STATEMENT_FORMAT:
        return Message(N_("format is not %(format)r"), format=STATEMENT_FORMAT)
    if statement.get("collector_key_id") != fingerprint(public):
        return Message(N_("it names another collector key"))
    if not isinstance(statement.get("event"), dict):
        return Message(N_("it names no event"))
    if not isinstance(statement.get("measurements"), list):
        return Message(N_("it lists no measurements"))
    if statement.get("withheld") != bundle.get("withheld"):
        return Message(N_("the bundle's withheld count is not the statement's"))
    return ""


def _entries(statement: dict[str, Any]) -> list[dict[str, Any]]:
    listed = statement.get("measurements")
    return [e for e in listed if isinstance(e, dict)] if isinstance(listed, list) else []


def _measurement(
    index: int,
    item: Any,
    entries: list[dict[str, Any]],
    statement: dict[str, Any],
    seen: set[tuple[str, str]],
) -> Check:
    subject = Message(N_("measurement #%(number)s"), number=index + 1)
    try:
        if not isinstance(item, dict):
            raise BundleError(Message(N_("not a JSON object")))
        subject = Message(N_("measurement %(id)s"), id=item.get("id"))
        seen.add((str(item.get("key_id")), str(item.get("id"))))  # present, valid or not
        if item.get("source") == OONI_SOURCE:
            return _ooni_measurement(subject, item, entries, statement)
        public, payload = _b64(item, "public_key"), _b64(item, "payload")
        envelope = Envelope(str(item.get("key_id")), payload, _b64(item, "signature"))
        verify(envelope, Purpose.MEASUREMENT, public)
        digest = hashlib.sha256(payload).hexdigest()
        entry = _listed(entries, envelope.key_id, digest)
        _check_attribution(item, entry)
        _check_document(item, payload, statement)
    except (EnvelopeError, BundleError) as exc:
        return Check(False, subject, _reason(exc))
    return Check(
        True,
        subject,
        Message(
            N_(
                "%(role)s key %(key_id)s, %(cc)s AS%(asn)s %(source)s: signature, key id and "
                "attribution as the statement says"
            ),
            role=entry.get("role", "probe"),
            key_id=envelope.key_id[:16],
            cc=item.get("cc"),
            asn=item.get("asn"),
            source=item.get("network_source"),
        ),
    )


def _ooni_measurement(
    subject: str, item: dict[str, Any], entries: list[dict[str, Any]], statement: dict[str, Any]
) -> Check:
    """An OONI measurement: no probe signed it, so what holds is the collector's
    statement (its bytes' SHA-256 and attribution, under the collector's signature)
    and its provenance, which anyone can look up in OONI's public archive."""
    payload = _b64(item, "payload")
    entry = _listed(entries, OONI_SOURCE, hashlib.sha256(payload).hexdigest())
    _check_attribution(item, entry)
    try:
        document = json.loads(payload)
        report_id, uid = document["report_id"], document.get("measurement_uid")
        url = document["input"]
    except (ValueError, UnicodeDecodeError, KeyError, TypeError):
        raise BundleError(Message(N_("the payload is not an OONI measurement"))) from None
    if report_id != item.get("report_id") or (uid is not None and uid != item.get("id")):
        raise BundleError(Message(N_("its report_id or measurement_uid differ from the payload's")))
    host = urlsplit(str(url)).hostname or ""
    event = statement.get("event")
    if isinstance(event, dict) and host.rstrip(".").lower() != event.get("domain"):
        raise BundleError(
            Message(N_("OONI measured %(domain)r, not the event's domain"), domain=host)
        )
    return Check(
        True,
        subject,
        Message(
            N_(
                "OONI report %(report_id)s, %(cc)s AS%(asn)s: bytes and attribution as the "
                "statement says; signed by no probe: OONI's public archive holds it"
            ),
            report_id=report_id,
            cc=item.get("cc"),
            asn=item.get("asn"),
        ),
    )


def _listed(entries: list[dict[str, Any]], key_id: str, digest: str) -> dict[str, Any]:
    for entry in entries:
        if entry.get("key_id") == key_id and entry.get("sha256") == digest:
            return entry
    raise BundleError(Message(N_("its key id and payload SHA-256 are not in the statement")))


def _check_attribution(item: dict[str, Any], entry: dict[str, Any]) -> None:
    if entry.get("id") != item.get("id"):
        raise BundleError(Message(N_("the statement lists this payload under another id")))
    changed = [name for name in ATTRIBUTION if item.get(name) != entry.get(name)]
    if changed:
        raise BundleError(
            Message(N_("its %(fields)s differ from the statement's"), fields=", ".join(changed))
        )


def _check_document(item: dict[str, Any], payload: bytes, statement: dict[str, Any]) -> None:
    try:
        document = json.loads(payload)
        measured = document["measurement"]
        measurement_id, domain = measured["measurement_id"], measured["domain"]
    except (ValueError, UnicodeDecodeError, KeyError, TypeError):
        raise BundleError(Message(N_("the signed payload is not a measurement document"))) from None
    if measurement_id != item.get("id"):
        raise BundleError(
            Message(N_("the probe signed the id %(id)r, not this one"), id=measurement_id)
        )
    event = statement.get("event")
    if isinstance(event, dict) and domain != event.get("domain"):
        raise BundleError(
            Message(N_("the probe measured %(domain)r, not the event's domain"), domain=domain)
        )


def _completeness(
    bundle: dict[str, Any],
    entries: list[dict[str, Any]],
    seen: set[tuple[str, str]],
    result: Verification,
) -> list[Check]:
    """Published entries the bundle lacks, and the withheld count against the statement."""
    checks = []
    for entry in entries:
        if entry.get("published") and (entry.get("key_id"), entry.get("id")) not in seen:
            checks.append(
                Check(
                    False,
                    Message(N_("measurement %(id)s"), id=entry.get("id")),
                    Message(N_("published in the statement, missing from the bundle")),
                )
            )
    withheld = sum(1 for e in entries if not e.get("published"))
    result.withheld = withheld
    if entries and withheld != bundle.get("withheld"):
        told = Message(
            N_("withheld is %(bundle)s, the statement's %(statement)s"),
            bundle=bundle.get("withheld"),
            statement=withheld,
        )
        checks.append(Check(False, Message(N_("bundle")), told))
    return checks
