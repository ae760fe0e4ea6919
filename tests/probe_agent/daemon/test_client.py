"""The collector client against a fake collector on 127.0.0.1 that verifies every envelope.

The fake (``tests.support.fake_collector``) implements docs/api.md's probe
endpoints and verifies each signature for its purpose, so a signing bug here
fails these tests; it also refuses unexpected headers and document keys.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.client_reqrep import ConnectionKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from probe_agent.daemon.client import (
    ERR_BAD_RESPONSE,
    GZIP_ABOVE,
    MAX_BATCH,
    CollectorClient,
    _describe,
)
from probe_agent.protocol.envelope import Envelope, Purpose, sign
from probe_agent.protocol.errors import CollectorRefused, CollectorUnreachable, InvalidOptionError
from probe_agent.protocol.inputs import DeclaredNetwork
from probe_agent.protocol.times import utc_now_rfc3339
from probe_agent.state.identity import key_id
from tests.support.fake_collector import FakeCollector
from tests.support.pki import TestPKI
from tests.support.probing import assert_no_lingering_tasks
from tests.support.simnet import free_tcp_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(20)]

DECLARED = DeclaredNetwork("DE", 3320)
TARGETS = ["alive.example", "blocked.example"]


@pytest.fixture(autouse=True)
async def _settled() -> AsyncIterator[None]:
    yield
    await assert_no_lingering_tasks()


@pytest.fixture
async def collector() -> AsyncIterator[FakeCollector]:
    async with FakeCollector(targets=TARGETS) as fake:
        yield fake
    assert fake.problems == []


def _closed_port_url() -> str:
    """A loopback URL where nothing listens: connection refused at once."""
    return f"http://127.0.0.1:{free_tcp_port('127.0.0.1')}"


def _measurement(key: Ed25519PrivateKey, mid: str, padding: int = 0) -> Envelope:
    document = {
        "measurement": {"measurement_id": mid, "domain": "alive.example", "pad": "x" * padding},
        "signed_at": _now(),
        "declared": None,
        "via_proxy": False,
    }
    return sign(key, Purpose.MEASUREMENT, document)


def _now() -> str:
    return utc_now_rfc3339()


async def _enrolled(fake: FakeCollector, key: Ed25519PrivateKey) -> None:
    async with CollectorClient([fake.url], key) as client:
        await client.enroll(None)


async def test_enroll_then_enroll_again_is_idempotent(collector: FakeCollector) -> None:
    key = Ed25519PrivateKey.generate()
    async with CollectorClient([collector.url], key) as client:
        first = await client.enroll(None, "probe", DECLARED)
        again = await client.enroll(None, "probe", DECLARED)
    assert first["probe_id"] == again["probe_id"]
    assert first["key_id"] == key_id(key)
    assert first["status"] == "active"
    assert collector.enrollments[0]["declared"] == {"cc": "DE", "asn": 3320}
    assert "token" not in collector.enrollments[0]  # optional: left out, not null


async def test_enroll_with_token_and_bad_token() -> None:
    async with FakeCollector(open_enrollment=False, tokens={"bwt_good"}) as fake:
        async with CollectorClient([fake.url], Ed25519PrivateKey.generate()) as client:
            answer = await client.enroll("bwt_good")
        assert answer["status"] == "active"
        async with CollectorClient([fake.url], Ed25519PrivateKey.generate()) as client:
            with pytest.raises(CollectorRefused) as info:
                await client.enroll("bwt_good")  # used up
            pending = await client.enroll(None)
    assert (info.value.status, info.value.code) == (401, "err_invalid_token")
    assert pending["status"] == "pending"
    assert fake.problems == []


async def test_checkin_returns_targets_and_schedule(collector: FakeCollector) -> None:
    key = Ed25519PrivateKey.generate()
    await _enrolled(collector, key)
    async with CollectorClient([collector.url], key) as client:
        checkin = await client.checkin(DECLARED, via_proxy=False, spool_depth=3, evicted=1)
    assert checkin.targets == TARGETS
    assert (checkin.interval_seconds, checkin.retest_spacing_seconds) == (300, 180)
    assert checkin.network == {"cc": "DE", "asn": 3320, "source": "declared"}
    assert checkin.status == "active"
    assert checkin.probe_id.startswith("p_")
    assert collector.checkins[0]["spool"] == {"depth": 3, "evicted": 1}
    assert collector.checkins[0]["via_proxy"] is False


@pytest.mark.parametrize(
    ("interval", "valid"),
    [(300, True), (300.0, True), (0.5, True), (True, False), ("300", False), (0, False)],
)
async def test_checkin_durations_are_json_numbers(
    collector: FakeCollector, interval: object, valid: bool
) -> None:
    answer = {
        "probe_id": "p_1",
        "status": "active",
        "server_time": "2026-11-21T15:00:01Z",
        "interval_seconds": interval,
        "retest_spacing_seconds": 180.0,
        "network": {"cc": "DE", "asn": 3320, "source": "declared"},
        "targets": [{"domain": "alive.example", "group": None, "kind": "primary"}],
    }
    collector.script("/probes/checkin", 200, json.dumps(answer).encode())
    async with CollectorClient([collector.url], Ed25519PrivateKey.generate()) as client:
        if valid:
            checkin = await client.checkin(None)
            assert (checkin.interval_seconds, checkin.retest_spacing_seconds) == (interval, 180)
        else:
            with pytest.raises(CollectorRefused, match="interval_seconds"):
                await client.checkin(None)


async def test_checkin_skips_invalid_target_names(collector: FakeCollector) -> None:
    collector.targets = ["ok.example", "bad_name!.example", "OK.example", "例子.测试"]
    key = Ed25519PrivateKey.generate()
    await _enrolled(collector, key)
    async with CollectorClient([collector.url], key) as client:
        checkin = await client.checkin(None)
    assert checkin.targets == ["ok.example", "xn--fsqu00a.xn--0zwm56d"]
    assert checkin.invalid_targets == 1


async def test_checkin_hands_out_the_ports_of_targets_measured_elsewhere(
    collector: FakeCollector,
) -> None:
    """The collector's own names come with the port they are served on; a bad port
    makes that target invalid (skipped and counted), never the whole answer."""
    answer = {
        "probe_id": "p_1",
        "status": "active",
        "server_time": "2026-11-21T15:00:01Z",
        "interval_seconds": 300,
        "retest_spacing_seconds": 180,
        "network": {"cc": "DE", "asn": 3320, "source": "declared"},
        "targets": [
            {"domain": "alive.example", "group": None, "kind": "primary", "port": None},
            {"domain": "bw.example", "group": None, "kind": "collector", "port": 8443},
            {"domain": "bad1.example", "kind": "collector", "port": 0},
            {"domain": "bad2.example", "kind": "collector", "port": "443"},
            {"domain": "bad3.example", "kind": "collector", "port": True},
            {"domain": "bad4.example", "kind": "collector", "port": 65536},
        ],
    }
    collector.script("/probes/checkin", 200, json.dumps(answer).encode())
    async with CollectorClient([collector.url], Ed25519PrivateKey.generate()) as client:
        checkin = await client.checkin(None)
    assert checkin.targets == ["alive.example", "bw.example"]
    assert checkin.ports == {"bw.example": 8443}
    assert checkin.invalid_targets == 4


async def test_checkin_with_an_unknown_key(collector: FakeCollector) -> None:
    async with CollectorClient([collector.url], Ed25519PrivateKey.generate()) as client:
        with pytest.raises(CollectorRefused) as info:
            await client.checkin(None)
    assert (info.value.status, info.value.code) == (401, "err_unknown_key")


async def test_pending_probe_cannot_check_in() -> None:
    async with FakeCollector(open_enrollment=False) as fake:
        key = Ed25519PrivateKey.generate()
        async with CollectorClient([fake.url], key) as client:
            await client.enroll(None)
            with pytest.raises(CollectorRefused) as info:
                await client.checkin(None)
    assert (info.value.status, info.value.code) == (403, "err_probe_pending")


async def test_submit_accepts_then_reports_duplicates(collector: FakeCollector) -> None:
    key = Ed25519PrivateKey.generate()
    await _enrolled(collector, key)
    envelopes = [_measurement(key, f"m{i}") for i in range(3)]
    async with CollectorClient([collector.url], key) as client:
        first = await client.submit(envelopes)
        again = await client.submit(envelopes)
    assert [(r.index, r.measurement_id, r.status) for r in first] == [
        (0, "m0", "accepted"),
        (1, "m1", "accepted"),
        (2, "m2", "accepted"),
    ]
    assert [r.status for r in again] == ["duplicate"] * 3
    assert all(r.stored for r in first + again)
    assert sorted(collector.stored) == ["m0", "m1", "m2"]


async def test_per_item_rejections_keep_their_index(collector: FakeCollector) -> None:
    key, stranger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    await _enrolled(collector, key)
    wrong_purpose = sign(key, Purpose.CHECKIN, {"measurement": {"measurement_id": "x"}})
    forged = Envelope(key_id(key), _measurement(key, "m9").payload, bytes(64))
    envelopes = [
        _measurement(key, "m1"),
        wrong_purpose,  # a signature for another purpose never verifies (domain separation)
        _measurement(stranger, "m2"),  # a key the collector does not know
        forged,
        _measurement(key, "m3"),
    ]
    async with CollectorClient([collector.url], key) as client:
        results = await client.submit(envelopes)
    assert [(r.index, r.status, r.error_code) for r in results] == [
        (0, "accepted", None),
        (1, "rejected", "err_bad_signature"),
        (2, "rejected", "err_unknown_key"),
        (3, "rejected", "err_bad_signature"),
        (4, "accepted", None),
    ]
    assert sorted(collector.stored) == ["m1", "m3"]


async def test_large_bodies_are_gzipped_small_ones_not(collector: FakeCollector) -> None:
    key = Ed25519PrivateKey.generate()
    await _enrolled(collector, key)
    async with CollectorClient([collector.url], key) as client:
        await client.submit([_measurement(key, "small")])
        await client.submit([_measurement(key, "big", padding=20_000)])
    small, big = [r for r in collector.received if r.path == "/measurements"]
    assert small.content_encoding is None
    assert small.body_bytes <= GZIP_ABOVE
    assert big.content_encoding == "gzip"
    assert big.body_bytes > 20_000 > big.wire_bytes  # decoded by the fake, and smaller on the wire
    assert collector.stored["big"]["measurement"]["pad"] == "x" * 20_000


async def test_enroll_and_checkin_are_never_gzipped(collector: FakeCollector) -> None:
    key = Ed25519PrivateKey.generate()
    collector.tokens.add("bwt_" + "x" * 2000)  # a body well over the gzip threshold
    async with CollectorClient([collector.url], key) as client:
        await client.enroll("bwt_" + "x" * 2000)
        await client.checkin(DeclaredNetwork("DE", 3320))
    enroll, checkin = collector.received
    assert checkin.content_encoding is None
    assert enroll.content_encoding is None
    assert enroll.body_bytes > GZIP_ABOVE


async def test_a_batch_over_100_is_refused_before_sending(collector: FakeCollector) -> None:
    """The round makes the batches (tests/probe_agent/daemon/test_round.py); one is one POST."""
    key = Ed25519PrivateKey.generate()
    await _enrolled(collector, key)
    envelopes = [_measurement(key, f"m{i:03d}") for i in range(MAX_BATCH + 1)]
    async with CollectorClient([collector.url], key) as client:
        with pytest.raises(ValueError, match="at most 100"):
            await client.submit(envelopes)
        results = await client.submit(envelopes[:MAX_BATCH])
    assert [r.index for r in results] == list(range(MAX_BATCH))
    assert [r.items for r in collector.received if r.path == "/measurements"] == [MAX_BATCH]


async def test_a_lower_batch_limit_is_met_by_halving() -> None:
    async with FakeCollector(max_batch=30) as fake:
        key = Ed25519PrivateKey.generate()
        await _enrolled(fake, key)
        envelopes = [_measurement(key, f"m{i}") for i in range(100)]
        async with CollectorClient([fake.url], key) as client:
            results = await client.submit(envelopes)
    assert [r.status for r in results] == ["accepted"] * 100
    assert [r.index for r in results] == list(range(100))
    assert max(r.items for r in fake.received if r.path == "/measurements") <= 30


async def test_one_measurement_over_the_body_limit_is_rejected_alone() -> None:
    async with FakeCollector(max_body=4096) as fake:
        key = Ed25519PrivateKey.generate()
        await _enrolled(fake, key)
        # Random padding: gzip cannot squeeze it under the limit.
        document = {
            "measurement": {"measurement_id": "huge", "pad": os.urandom(6000).hex()},
            "signed_at": _now(),
            "declared": None,
            "via_proxy": False,
        }
        huge = sign(key, Purpose.MEASUREMENT, document)
        envelopes = [_measurement(key, "a"), huge, _measurement(key, "b")]
        async with CollectorClient([fake.url], key) as client:
            results = await client.submit(envelopes)
    assert [(r.status, r.error_code) for r in results] == [
        ("accepted", None),
        ("rejected", "err_body_too_large"),
        ("accepted", None),
    ]


async def test_first_url_down_then_second_answers(collector: FakeCollector) -> None:
    key = Ed25519PrivateKey.generate()
    urls = [_closed_port_url(), collector.url]
    async with CollectorClient(urls, key) as client:
        answer = await client.enroll(None)
        assert client.answered_by == collector.url
        await client.checkin(None)
    assert answer["status"] == "active"
    assert len(collector.checkins) == 1


async def test_5xx_moves_on_to_the_next_collector(collector: FakeCollector) -> None:
    async with FakeCollector(targets=["other.example"]) as broken:
        key = Ed25519PrivateKey.generate()
        await _enrolled(collector, key)
        broken.script("/probes/checkin", 503)
        async with CollectorClient([broken.url, collector.url], key) as client:
            checkin = await client.checkin(None)
        assert checkin.targets == TARGETS
        assert broken.checkins == []


async def test_every_collector_5xx_raises_the_collector_error(collector: FakeCollector) -> None:
    collector.script("/probes/enroll", 503, headers={"Retry-After": "7"})
    async with CollectorClient(
        [_closed_port_url(), collector.url], Ed25519PrivateKey.generate()
    ) as client:
        with pytest.raises(CollectorRefused) as info:
            await client.enroll(None)
    assert (info.value.status, info.value.code, info.value.retry_after) == (
        503,
        "err_internal",
        7.0,
    )


async def test_nothing_answers() -> None:
    urls = [_closed_port_url(), _closed_port_url()]
    async with CollectorClient(urls, Ed25519PrivateKey.generate()) as client:
        with pytest.raises(CollectorUnreachable) as info:
            await client.enroll(None)
    message = str(info.value)
    assert "collector 1: connection refused" in message
    assert "collector 2: connection refused" in message
    assert "127.0.0.1" not in message  # failures by kind and position, not by address


async def test_a_collector_that_hangs_times_out_and_the_next_answers(
    collector: FakeCollector,
) -> None:
    async with FakeCollector() as hanging:
        hanging.stall = True
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with CollectorClient(
            [hanging.url, collector.url], Ed25519PrivateKey.generate(), timeout=0.5
        ) as client:
            answer = await client.enroll(None)
        assert loop.time() - started < 3
    assert answer["status"] == "active"


@pytest.mark.parametrize(
    ("status", "body", "code"),
    [
        (429, None, "err_rate_limited"),
        (
            422,
            b'{"error": {"code": "err_timestamp_out_of_window", "message": "m"}}',
            "err_timestamp_out_of_window",
        ),
        (403, b'{"error": {"code": "err_revoked_key", "message": "revoked"}}', "err_revoked_key"),
        (404, b"<html>not here</html>", ERR_BAD_RESPONSE),
        (200, b"<html>captive portal</html>", ERR_BAD_RESPONSE),
        (302, b"", ERR_BAD_RESPONSE),
    ],
    ids=["429", "422-timestamp", "403-revoked", "404-html", "200-html", "redirect"],
)
async def test_error_answers_map_to_collector_errors(
    collector: FakeCollector, status: int, body: bytes | None, code: str
) -> None:
    second = _closed_port_url()  # a 4xx is final: the next URL is never tried
    html = body is not None and body.startswith(b"<")
    kwargs: dict[str, Any] = {"content_type": "text/html" if html else "application/json"}
    if status == 302:
        kwargs["headers"] = {"Location": "http://elsewhere.invalid/"}
    collector.script("/probes/enroll", status, body, **kwargs)
    async with CollectorClient([collector.url, second], Ed25519PrivateKey.generate()) as client:
        with pytest.raises(CollectorRefused) as info:
            await client.enroll(None)
    assert (info.value.status, info.value.code) == (status, code)


async def test_checkin_answer_missing_fields_is_a_bad_response(collector: FakeCollector) -> None:
    collector.script("/probes/checkin", 200, b'{"probe_id": "p_1", "targets": []}')
    async with CollectorClient([collector.url], Ed25519PrivateKey.generate()) as client:
        with pytest.raises(CollectorRefused) as info:
            await client.checkin(None)
    assert info.value.code == ERR_BAD_RESPONSE


async def test_an_enroll_answer_for_another_key_is_a_bad_response(
    collector: FakeCollector,
) -> None:
    other = key_id(Ed25519PrivateKey.generate())
    body = f'{{"probe_id": "p_1", "key_id": "{other}", "status": "active", "role": "probe"}}'
    collector.script("/probes/enroll", 201, body.encode())
    async with CollectorClient([collector.url], Ed25519PrivateKey.generate()) as client:
        with pytest.raises(CollectorRefused) as info:
            await client.enroll(None)
    assert info.value.code == ERR_BAD_RESPONSE


async def test_results_that_do_not_match_the_batch_are_a_bad_response(
    collector: FakeCollector,
) -> None:
    key = Ed25519PrivateKey.generate()
    collector.script("/measurements", 200, b'{"results": [{"index": 0, "status": "accepted"}]}')
    async with CollectorClient([collector.url], key) as client:
        with pytest.raises(CollectorRefused) as info:
            await client.submit([_measurement(key, "a"), _measurement(key, "b")])
    assert info.value.code == ERR_BAD_RESPONSE


async def test_https_collector_trusted_through_ca_file(tmp_path: Path) -> None:
    pki = TestPKI.create(tmp_path / "pki")
    async with FakeCollector(tls=pki.loopback_context()) as fake:
        assert fake.url.startswith("https://127.0.0.1:")
        async with CollectorClient([fake.url], Ed25519PrivateKey.generate()) as client:
            with pytest.raises(CollectorUnreachable, match="TLS certificate not trusted"):
                await client.enroll(None)
        key = Ed25519PrivateKey.generate()
        async with CollectorClient([fake.url], key, ca_file=str(pki.ca_file)) as client:
            answer = await client.enroll(None)
    assert answer["key_id"] == key_id(key)
    assert fake.problems == []


def test_an_unreadable_ca_file_is_invalid_input(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(InvalidOptionError, match="cannot load the CA bundle"):
        CollectorClient(["https://127.0.0.1:1"], Ed25519PrivateKey.generate(), ca_file=str(bad))


def _connector_error(error: OSError) -> aiohttp.ClientConnectorError:
    key = ConnectionKey("127.0.0.1", 443, True, True, None, None, None)
    return aiohttp.ClientConnectorError(key, error)


@pytest.mark.parametrize(
    ("exc", "described"),
    [
        (
            _connector_error(
                ConnectionRefusedError(111, "Connect call failed ('203.0.113.9', 443)")
            ),
            "connection refused",
        ),
        (_connector_error(socket.gaierror(-2, "Name or service not known")), "cannot resolve"),
        (TimeoutError(), "timed out"),
        (aiohttp.ServerDisconnectedError(), "connection closed before the answer"),
    ],
    ids=["refused", "dns", "timeout", "disconnected"],
)
def test_failures_are_described_by_kind_without_addresses(exc: Exception, described: str) -> None:
    text = _describe(exc)
    assert described in text
    assert "203.0.113.9" not in text
