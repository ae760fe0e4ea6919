"""The signed envelope: the one wire format between probes and the collector.

A probe signs the exact bytes of a JSON document with its Ed25519 key, after a
domain-separation prefix naming what the document is (a measurement, a
check-in, a key rotation), so that a signature made for one purpose can never
be replayed as another. Nothing is re-canonicalized: the collector verifies the
very bytes the probe signed, keeps them, and anyone can verify them again later
with the probe's public key. The key id is the key's fingerprint (SHA-256 of
the raw public key, hex).

Wire form (JSON)::

    {"key_id": "<64 hex>", "payload": "<base64 of the signed bytes>",
     "signature": "<base64 of the 64-byte Ed25519 signature>"}

The collector imports this module; it is the only definition of the format.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from probe_agent.protocol.messages import N_, Message

ENVELOPE_VERSION = 1
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64


class Purpose(StrEnum):
    """What a signed document is; part of the signed bytes (domain separation)."""

    MEASUREMENT = "measurement"
    CHECKIN = "checkin"
    ENROLL = "enroll"
    ROTATE = "rotate"

    @property
    def prefix(self) -> bytes:
        return f"blockwatch/v{ENVELOPE_VERSION}/{self.value}\n".encode()


class EnvelopeError(ValueError):
    """An envelope that is malformed or whose signature does not verify."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def fingerprint(public_key: bytes) -> str:
    """The key id: SHA-256 of the raw 32-byte Ed25519 public key, lower-case hex."""
    return hashlib.sha256(public_key).hexdigest()


def public_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise EnvelopeError("err_malformed_envelope", f"{what} is not valid base64") from exc


def b64_field(data: dict[str, Any], name: str, error: Callable[[str], Exception]) -> bytes:
    """The base64 field *name* of a JSON object, decoded; *error(message)* is raised
    when it is missing or not base64 (each format has its own error type)."""
    value = data.get(name)
    if not isinstance(value, str):
        raise error(Message(N_("%(name)s is missing"), name=name))
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise error(Message(N_("%(name)s is not base64"), name=name)) from None


@dataclass(frozen=True, slots=True)
class Envelope:
    key_id: str
    payload: bytes
    signature: bytes

    def to_json(self) -> dict[str, str]:
        return {
            "key_id": self.key_id,
            "payload": b64encode(self.payload),
            "signature": b64encode(self.signature),
        }

    @classmethod
    def from_json(cls, data: Any) -> Envelope:
        if not isinstance(data, dict):
            raise EnvelopeError("err_malformed_envelope", "an envelope is a JSON object")
        key_id, payload, signature = data.get("key_id"), data.get("payload"), data.get("signature")
        if not isinstance(key_id, str) or not isinstance(payload, str):
            raise EnvelopeError(
                "err_malformed_envelope", "key_id, payload and signature must be strings"
            )
        if not isinstance(signature, str):
            raise EnvelopeError(
                "err_malformed_envelope", "key_id, payload and signature must be strings"
            )
        if len(key_id) != 64 or any(c not in "0123456789abcdef" for c in key_id):
            raise EnvelopeError("err_malformed_envelope", "key_id must be 64 lower-case hex digits")
        raw_payload = b64decode(payload, "payload")
        raw_signature = b64decode(signature, "signature")
        if len(raw_signature) != SIGNATURE_BYTES:  # a truncated signature cannot verify
            raise EnvelopeError("err_bad_signature", "a signature is 64 bytes")
        return cls(key_id, raw_payload, raw_signature)

    def payload_json(self) -> Any:
        """The signed document, parsed (call only after ``verify``)."""
        try:
            return json.loads(self.payload)
        except (ValueError, UnicodeDecodeError) as exc:
            raise EnvelopeError("err_malformed_payload", "the payload is not JSON") from exc


def sign(key: Ed25519PrivateKey, purpose: Purpose, document: dict[str, Any]) -> Envelope:
    """Serialize *document* once and sign exactly those bytes."""
    payload = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
    return sign_bytes(key, purpose, payload)


def sign_bytes(key: Ed25519PrivateKey, purpose: Purpose, payload: bytes) -> Envelope:
    return Envelope(fingerprint(public_bytes(key)), payload, key.sign(purpose.prefix + payload))


def verify(envelope: Envelope, purpose: Purpose, public_key: bytes) -> None:
    """Raise ``EnvelopeError(err_bad_signature)`` unless the signature verifies."""
    if fingerprint(public_key) != envelope.key_id:
        problem = Message(N_("the key does not match the key id"))
        raise EnvelopeError("err_bad_signature", problem)
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            envelope.signature, purpose.prefix + envelope.payload
        )
    except InvalidSignature as exc:
        problem = Message(N_("the signature does not verify"))
        raise EnvelopeError("err_bad_signature", problem) from exc
