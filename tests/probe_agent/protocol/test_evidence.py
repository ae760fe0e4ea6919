"""The bundle verifier on malformed input: a failed check, never an exception.

Real bundles (from a running collector) are verified in
tests/collector/api/test_evidence_api.py; here, what a hostile or broken file does.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from probe_agent.protocol.envelope import fingerprint, public_bytes
from probe_agent.protocol.evidence import (
    FORMAT,
    BundleError,
    canonical_key_id,
    key_id_of_well_known,
    verify_bundle,
)

KEY = public_bytes(Ed25519PrivateKey.generate())
KEY_ID = fingerprint(KEY)


def minimal(**changes: Any) -> dict[str, Any]:
    bundle: dict[str, Any] = {
        "format": FORMAT,
        "collector_key_id": KEY_ID,
        "collector_public_key": base64.b64encode(KEY).decode(),
        "withheld": 0,
        "statement": base64.b64encode(b"{}").decode(),
        "statement_signature": base64.b64encode(b"\0" * 64).decode(),
        "measurements": [],
    }
    bundle.update(changes)
    return bundle


@pytest.mark.parametrize(
    "bundle",
    [
        [],
        "text",
        minimal(format="blockwatch-evidence/0"),
        minimal(collector_public_key="***"),
        minimal(collector_key_id="0" * 64),
        minimal(statement=None),
        minimal(measurements="none"),
        minimal(measurements=[1, {"id": "x"}, {"id": "y", "public_key": "AA==", "payload": ""}]),
    ],
)
def test_malformed_bundles_fail_with_a_line_not_an_exception(bundle: Any) -> None:
    result = verify_bundle(bundle, KEY_ID)
    assert not result.ok
    assert all(check.line().startswith(("ok  ", "FAIL")) for check in result.checks)
    assert result.summary().startswith("INVALID")


def test_a_bad_statement_signature_fails_even_with_no_measurement() -> None:
    result = verify_bundle(minimal(), KEY_ID)
    failed = [c for c in result.checks if not c.ok]
    assert [c.subject for c in failed] == ["statement"]


def test_fingerprints_and_saved_well_known_documents() -> None:
    assert canonical_key_id(KEY_ID.upper() + "\n") == KEY_ID
    assert canonical_key_id("abc") is None
    document = {"collector_key_id": KEY_ID, "public_key": base64.b64encode(KEY).decode()}
    assert key_id_of_well_known(document) == KEY_ID
    with pytest.raises(BundleError):
        key_id_of_well_known(dict(document, collector_key_id="0" * 64))
    with pytest.raises(BundleError):
        key_id_of_well_known([])
