"""The signed endpoint list: what verifies, and every way a list is refused (another
key, a changed byte, a document naming another key, malformed entries, too many)."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from probe_agent.protocol.endpoints import (
    MAX_ENDPOINTS,
    PREFIX,
    Endpoint,
    EndpointList,
    EndpointsError,
    signed,
    verify,
)
from probe_agent.protocol.envelope import fingerprint, public_bytes
from probe_agent.protocol.errors import InvalidOptionError

ISSUED = "2026-12-03T07:00:00Z"


class Key:
    def __init__(self) -> None:
        self.private = Ed25519PrivateKey.generate()
        self.public = public_bytes(self.private)
        self.key_id = fingerprint(self.public)

    def sign(self, prefix: bytes, message: bytes) -> bytes:
        return self.private.sign(prefix + message)


def listed(key: Key, *endpoints: Endpoint, issued: str = ISSUED) -> dict[str, str]:
    return signed(EndpointList(key.key_id, issued, endpoints), key.public, key.sign)


def test_a_list_signed_by_the_anchored_key_verifies() -> None:
    key = Key()
    endpoints = (
        Endpoint("https://bw.example"),
        Endpoint("https://bw.example", address="203.0.113.9"),
        Endpoint("https://bw.example", sni="front.example"),
        Endpoint("http://bwcollectorabcdefghij.onion"),
    )
    got, public = verify(listed(key, *endpoints), key.key_id)
    assert got.endpoints == endpoints
    assert (got.collector_key_id, got.issued_at, public) == (key.key_id, ISSUED, key.public)


def test_a_list_signed_by_another_key_is_refused() -> None:
    anchored, other = Key(), Key()
    with pytest.raises(EndpointsError, match="another key"):
        verify(listed(other, Endpoint("https://evil.example")), anchored.key_id)


def test_a_changed_byte_is_refused() -> None:
    key = Key()
    answer = listed(key, Endpoint("https://bw.example"))
    document = base64.b64decode(answer["document"]).replace(b"bw.example", b"ev.example")
    answer["document"] = base64.b64encode(document).decode()
    with pytest.raises(EndpointsError, match="signature"):
        verify(answer, key.key_id)


def test_the_endpoints_prefix_separates_it_from_other_signed_documents() -> None:
    """A signature the key made over the same bytes for another purpose does not verify."""
    key = Key()
    answer = listed(key, Endpoint("https://bw.example"))
    document = base64.b64decode(answer["document"])
    answer["signature"] = base64.b64encode(
        key.private.sign(b"blockwatch/v1/measurement\n" + document)
    ).decode()
    with pytest.raises(EndpointsError, match="signature"):
        verify(answer, key.key_id)
    assert PREFIX == b"blockwatch/v1/endpoints\n"


def _resigned(key: Key, document: object) -> dict[str, str]:
    raw = json.dumps(document).encode()
    return {
        "format": "blockwatch-endpoints/1",
        "collector_public_key": base64.b64encode(key.public).decode(),
        "document": base64.b64encode(raw).decode(),
        "signature": base64.b64encode(key.sign(PREFIX, raw)).decode(),
    }


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"format": "other/1"}, "not a blockwatch-endpoints/1 list"),
        ({"collector_key_id": "0" * 64, "endpoints": []}, "another collector key"),
        ({"endpoints": [{"url": "ftp://bw.example"}]}, "malformed"),
        ({"endpoints": [{"url": "https://bw.example", "address": "bw.example"}]}, "malformed"),
        ({"endpoints": [{"url": "http://bw.example", "sni": "front.example"}]}, "malformed"),
        ({"endpoints": [{"url": "https://bw.example"}] * (MAX_ENDPOINTS + 1)}, "at most"),
        ({"issued_at": "yesterday"}, "malformed"),
        ({"issued_at": "2026-12-03T07:00:00"}, "malformed"),  # no time zone
    ],
)
def test_a_signed_but_malformed_list_is_refused(document: dict[str, object], message: str) -> None:
    key = Key()
    whole = {
        "format": "blockwatch-endpoints/1",
        "collector_key_id": key.key_id,
        "issued_at": ISSUED,
        "endpoints": [],
    }
    with pytest.raises(EndpointsError, match=message):
        verify(_resigned(key, whole | document), key.key_id)


@pytest.mark.parametrize(
    "answer",
    [None, [], {"format": "blockwatch-endpoints/1"}, {"format": "blockwatch-endpoints/1",
     "collector_public_key": "not base64!", "document": "", "signature": ""}],
)  # fmt: skip
def test_junk_is_an_error_not_a_crash(answer: object) -> None:
    with pytest.raises(EndpointsError):
        verify(answer, Key().key_id)


def test_the_operators_spelling_round_trips() -> None:
    endpoint = Endpoint.parse(" https://BW.example/ ;address=2001:db8::0:9;sni=Front.Example")
    assert endpoint == Endpoint("https://BW.example", "2001:db8::9", "front.example")
    assert Endpoint.parse(endpoint.text()) == endpoint
    bad = [
        "https://bw.example;port=1",
        "https://bw.example;sni=",
        "https://bw.example;address=1.2.3.4;address=1.2.3.5",
        "https://bw.example;address=nowhere",
    ]
    for text in bad:
        with pytest.raises(InvalidOptionError):
            Endpoint.parse(text)
