"""A round keeps the collector's endpoint list only when it verifies against the
pinned collector key; a list signed by another key, or altered, is refused whole
(the kept one stays, ``status`` says why) and the round goes on."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from probe_agent.daemon.round import EXIT_OK, RunOptions, run_round
from probe_agent.measure.engine import EngineConfig
from probe_agent.protocol.inputs import DeclaredNetwork
from probe_agent.state import reach
from probe_agent.state.status import read_status
from tests.support.collector_keys import CollectorKey
from tests.support.fake_collector import FakeCollector
from tests.support.probing import assert_no_lingering_tasks, loopback_engine


@pytest.fixture(autouse=True)
async def _settled() -> AsyncIterator[None]:
    yield
    await assert_no_lingering_tasks()


def kept(state: Path) -> list[str]:
    listing = reach.load_reach(state).endpoints
    return [e.url for e in listing.endpoints] if listing else []


async def test_a_list_from_another_key_or_altered_is_refused_and_the_round_goes_on(
    tmp_path: Path,
) -> None:
    key, other = CollectorKey(), CollectorKey()
    state = tmp_path / "probe"
    async with FakeCollector(collector_key_id=key.key_id) as collector:
        options = RunOptions(
            (collector.url,),
            state,
            EngineConfig(resolvers=()),
            declared=DeclaredNetwork("CN", 4134),
        )

        async def round_with(endpoints: dict[str, str]) -> None:
            collector.endpoints = endpoints
            result = await run_round(options, report=lambda _: None, make_engine=loopback_engine)
            assert result.exit_status == EXIT_OK

        await round_with(key.listing(collector.url, "https://alt.example"))
        assert kept(state) == [collector.url, "https://alt.example"]
        assert read_status(state).last_error is None

        # The censor's own list, signed by its own key: refused, the kept list stays.
        await round_with(other.listing("https://honeypot.example"))
        assert kept(state) == [collector.url, "https://alt.example"]
        assert read_status(state).last_error == "endpoints_refused"

        # The collector's list with one endpoint changed in transit: refused too.
        forged = key.listing(collector.url, "https://alt.example", issued="2026-12-03T08:00:00Z")
        document = base64.b64decode(forged["document"]).replace(b"alt.example", b"evl.example")
        forged["document"] = base64.b64encode(document).decode()
        await round_with(forged)
        assert kept(state) == [collector.url, "https://alt.example"]
        assert read_status(state).endpoints == 2
    assert len(collector.checkins) == 3 and collector.problems == []
