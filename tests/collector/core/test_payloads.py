"""The stored form of a signed payload: the exact bytes come back, by this module or by
any zlib reader (a researcher with a database dump and Python's zlib), at any size up
to the ingest cap, and smaller than the signed bytes for a real measurement."""

from __future__ import annotations

import json
import os
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector.core.models import pack_payload, unpack_payload
from collector.core.settings import CollectorSettings


@given(st.binary(max_size=70_000))
def test_any_bytes_come_back_exactly(payload: bytes) -> None:
    stored = pack_payload(payload)
    assert unpack_payload(stored) == payload
    assert zlib.decompress(stored) == payload  # a plain zlib reader, default window


def test_a_document_at_the_ingest_cap_comes_back_and_shrinks() -> None:
    cap = CollectorSettings.model_fields["max_payload_bytes"].default
    observations: list[dict[str, object]] = []
    while len(json.dumps(observations)) < cap - 200:
        observations.append({"answer": os.urandom(4).hex(), "failure": None, "t": 0.0123})
    raw = json.dumps({"measurement": {"dns": observations}}).encode()
    stored = pack_payload(raw)
    assert unpack_payload(stored) == raw
    assert len(stored) < len(raw) * 0.8  # random hex answers: little to gain, still some


def test_a_damaged_row_is_an_error_not_other_bytes() -> None:
    stored = bytearray(pack_payload(b'{"measurement": {"domain": "alive.bar"}}' * 20))
    stored[len(stored) // 2] ^= 0xFF
    with pytest.raises(zlib.error):
        unpack_payload(bytes(stored))
