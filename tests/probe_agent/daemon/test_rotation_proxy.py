"""``rotate-key --proxy``: every request of a rotation reaches the collector through the proxy.

A real SOCKS5 proxy on 127.0.0.1 (tests/support/socks_proxy.py) records each
destination it was asked for; the fake collector verifies both signatures.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from probe_agent.daemon.client import CollectorClient
from probe_agent.daemon.rotation import rotate_key
from probe_agent.state.identity import NEW_KEY_FILE, Identity, key_id, load_or_create_key, pem
from tests.support.fake_collector import FakeCollector
from tests.support.probing import PROBE, assert_no_lingering_tasks
from tests.support.socks_proxy import Socks5Proxy


@pytest.fixture(autouse=True)
async def _settled() -> AsyncIterator[None]:
    yield
    await assert_no_lingering_tasks()


async def _enrolled(state_dir: Path, fake: FakeCollector) -> Identity:
    identity = Identity.open(state_dir)
    async with CollectorClient([fake.url], identity.key) as client:
        answer = await client.enroll(None)
    identity.record(probe_id=answer["probe_id"], status=answer["status"], collector=fake.url)
    return identity


def _destination(fake: FakeCollector) -> tuple[str, int]:
    host, port = fake.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


async def test_rotate_key_cli_goes_through_the_proxy(tmp_path: Path) -> None:
    state_dir = tmp_path / "s"
    async with FakeCollector() as collector, Socks5Proxy() as proxy:
        old = await _enrolled(state_dir, collector)
        args = ["rotate-key", "--state-dir", str(state_dir), "--collector", collector.url,
                "--proxy", proxy.url, "--collector-timeout", "5"]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("BLOCKWATCH_")}
        proc = await asyncio.create_subprocess_exec(
            str(PROBE), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=env,
        )  # fmt: skip
        async with asyncio.timeout(30):
            out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert out.decode().strip() == key_id(load_or_create_key(state_dir)) != old.key_id
    assert proxy.destinations == [_destination(collector)]  # the rotation, through the proxy
    assert len(collector.rotations) == 1
    assert collector.problems == []


async def test_a_resumed_rotation_checks_in_through_the_proxy_and_says_so(
    tmp_path: Path,
) -> None:
    """The collector rotated but the answer was lost: the retry's refusal leads to a
    check-in signed by the new key; both requests go through the proxy."""
    state_dir = tmp_path / "s"
    async with FakeCollector() as collector, Socks5Proxy() as proxy:
        old = await _enrolled(state_dir, collector)
        new = Ed25519PrivateKey.generate()
        (state_dir / NEW_KEY_FILE).write_bytes(pem(new))
        (state_dir / NEW_KEY_FILE).chmod(0o600)
        async with CollectorClient([collector.url], old.key) as client:
            await client.rotate(new)  # the answer the interrupted attempt never read
        rotated = await rotate_key(state_dir, (collector.url,), proxy=proxy.url)
    assert rotated.resumed and rotated.new_key_id == key_id(new)
    assert proxy.destinations == [_destination(collector)] * 2  # rotate, then check in
    assert collector.checkins[-1]["via_proxy"] is True
    assert collector.checkins[-1]["public_evidence"] is False


async def test_rotate_key_refuses_an_invalid_proxy(tmp_path: Path) -> None:
    async with FakeCollector() as collector:
        await _enrolled(tmp_path / "s", collector)
        proc = await asyncio.create_subprocess_exec(
            str(PROBE), "rotate-key", "--state-dir", str(tmp_path / "s"),
            "--collector", collector.url, "--proxy", "ftp://127.0.0.1:1",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        async with asyncio.timeout(30):
            _, err = await proc.communicate()
    assert proc.returncode == 2
    assert "invalid proxy" in err.decode()
    assert collector.rotations == []
