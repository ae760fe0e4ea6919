"""Integration: the HTTP round trips to the Mastodon API over the measured connection.

The servers answer the three API paths the probe tries in order, or answer like
a web site or an error page, or trickle, or never end the body; over TLS, and
once over plain HTTP.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from probe_agent.measure.http import API_PATHS, HTTPSettings
from probe_agent.measure.observations import Measurement
from probe_agent.protocol.vocabulary import UNKNOWN_FAILURE_PREFIX, Failure, Operation
from tests.support.probing import assert_no_lingering_tasks, loopback_engine
from tests.support.simnet import STEP_TIMEOUT, SimInstance, SimulatedNetwork
from tests.support.tls_servers import ServerBehaviour

pytestmark = [pytest.mark.integration, pytest.mark.timeout(15)]

DOMAIN = "social.example"
SLACK = 1.5


@pytest.fixture(autouse=True)
async def _settled() -> AsyncIterator[None]:
    yield
    await assert_no_lingering_tasks()


async def _measure(tmp_path: Path, behaviour: ServerBehaviour, **overrides: object) -> Measurement:
    async with SimulatedNetwork(tmp_path, [SimInstance(DOMAIN, behaviour)]) as net:
        return await loopback_engine(net.engine_config(**overrides)).measure(DOMAIN)


def _paths(m: Measurement) -> list[str]:
    return ["/" + o.url.split("/", 3)[3] for o in m.http]


async def test_v1_fallback(tmp_path: Path) -> None:
    m = await _measure(tmp_path, ServerBehaviour.MASTODON_V1_ONLY)
    assert _paths(m) == list(API_PATHS[:2])
    v2, v1 = m.http
    assert (v2.status_code, v2.failure, v2.mastodon) == (404, None, False)
    assert (v1.status_code, v1.failure, v1.mastodon) == (200, None, True)
    assert v1.instance_domain == DOMAIN
    assert v1.software == "mastodon"


async def test_nodeinfo_fallback(tmp_path: Path) -> None:
    m = await _measure(tmp_path, ServerBehaviour.NODEINFO_ONLY)
    assert _paths(m) == list(API_PATHS)
    assert [o.status_code for o in m.http] == [404, 404, 200]
    assert [o.mastodon for o in m.http] == [False, False, True]
    assert m.http[2].software == "nodeinfo"
    assert all(o.failure is None for o in m.http)


@pytest.mark.parametrize(
    ("behaviour", "status"),
    [(ServerBehaviour.NOT_MASTODON, 200), (ServerBehaviour.HTTP_500, 500)],
)
async def test_not_an_instance(tmp_path: Path, behaviour: ServerBehaviour, status: int) -> None:
    m = await _measure(tmp_path, behaviour)
    # Every path asked, on one keep-alive connection, none of them an instance.
    assert _paths(m) == list(API_PATHS)
    for obs in m.http:
        assert (obs.status_code, obs.failure, obs.mastodon) == (status, None, False)
        assert obs.instance_domain is None
        assert obs.headers["content-type"].startswith("text/html")
        assert obs.body_length > 0
    assert len(m.tcp) == 1


async def test_broken_response_is_a_malformed_http_response(tmp_path: Path) -> None:
    m = await _measure(tmp_path, ServerBehaviour.BROKEN_HTTP)
    assert len(m.http) == 1
    obs = m.http[0]
    assert obs.failure is not None
    assert obs.failure.startswith(f"{UNKNOWN_FAILURE_PREFIX}malformed HTTP response")
    assert obs.failed_operation == Operation.HTTP_TRANSACTION
    assert obs.status_code is None
    assert obs.t - obs.t0 < 1.0  # refused at once, no timeout


async def test_trickling_response_times_out(tmp_path: Path) -> None:
    m = await _measure(tmp_path, ServerBehaviour.TRICKLE)
    assert len(m.http) == 1  # a failed round trip ends the HTTP step
    obs = m.http[0]
    assert obs.failure == Failure.GENERIC_TIMEOUT
    assert obs.failed_operation == Operation.HTTP_TRANSACTION
    assert STEP_TIMEOUT - 0.1 < obs.t - obs.t0 < STEP_TIMEOUT + SLACK
    assert not obs.mastodon


async def test_endless_body_is_capped(tmp_path: Path) -> None:
    cap = 64 * 1024
    m = await _measure(tmp_path, ServerBehaviour.ENDLESS_BODY, http=HTTPSettings(2.0, cap))
    assert len(m.http) == 1  # the rest of the body is still on the wire: stop there
    obs = m.http[0]
    assert (obs.status_code, obs.failure) == (200, None)
    assert obs.body_truncated
    assert obs.body_length == cap
    assert not obs.mastodon
    assert obs.t - obs.t0 < 1.0  # the cap ends it, not the timeout


async def test_endless_body_default_cap(tmp_path: Path) -> None:
    m = await _measure(tmp_path, ServerBehaviour.ENDLESS_BODY)
    assert m.http[0].body_truncated
    assert m.http[0].body_length == HTTPSettings().body_cap


async def test_plain_http(tmp_path: Path) -> None:
    m = await _measure(tmp_path, ServerBehaviour.PLAIN_HTTP, scheme="http")
    assert m.scheme == "http"
    assert m.decoy_sni is None
    assert m.tls == []
    assert [o.failure for o in m.tcp] == [None]
    first = m.http[0]
    assert first.url.startswith(f"http://{DOMAIN}:")
    assert first.url.endswith(API_PATHS[0])
    assert (first.status_code, first.mastodon, first.instance_domain) == (200, True, DOMAIN)


async def test_close_delimited_answer_without_close_notify(tmp_path: Path) -> None:
    m = await _measure(tmp_path, ServerBehaviour.RAGGED_CLOSE)
    first = m.http[0]
    assert (first.status_code, first.failure, first.mastodon) == (200, None, True)
