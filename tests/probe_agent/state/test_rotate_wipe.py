"""``rotate-key`` against the fake collector (which verifies both signatures), and ``wipe``."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from probe_agent.cli import EXIT_INVALID_INPUT, app
from probe_agent.daemon.client import ERR_BAD_RESPONSE, CollectorClient
from probe_agent.daemon.rotation import rotate_key
from probe_agent.protocol.envelope import Envelope, Purpose, sign
from probe_agent.protocol.errors import CollectorRefused
from probe_agent.protocol.times import utc_now_rfc3339
from probe_agent.state.identity import (
    KEY_FILE,
    NEW_KEY_FILE,
    OLD_KEY_FILE,
    STATE_FILE,
    Identity,
    key_id,
    load_or_create_key,
    pem,
)
from probe_agent.state.spool import SPOOL_FILE, Spool
from tests.support.fake_collector import FakeCollector, error_body
from tests.support.probing import PROBE, assert_no_lingering_tasks
from tests.support.simnet import free_tcp_port

cli = CliRunner()


@pytest.fixture(autouse=True)
async def _settled() -> AsyncIterator[None]:
    yield
    await assert_no_lingering_tasks()


@pytest.fixture
async def collector() -> AsyncIterator[FakeCollector]:
    async with FakeCollector(targets=["alive.example"]) as fake:
        yield fake
    assert fake.problems == []


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _measurement(key: Ed25519PrivateKey, mid: str) -> Envelope:
    document = {
        "measurement": {"measurement_id": mid, "domain": "alive.example"},
        "signed_at": utc_now_rfc3339(),
        "declared": None,
        "via_proxy": False,
    }
    return sign(key, Purpose.MEASUREMENT, document)


async def _enrolled(state_dir: Path, fake: FakeCollector) -> Identity:
    identity = Identity.open(state_dir)
    async with CollectorClient([fake.url], identity.key) as client:
        answer = await client.enroll(None)
    identity.record(probe_id=answer["probe_id"], status=answer["status"], collector=fake.url)
    return identity


async def _rotate_cli(state_dir: Path, *collectors: str) -> tuple[int, str, str]:
    args = ["rotate-key", "--state-dir", str(state_dir), "--collector-timeout", "5"]
    for url in collectors:
        assert urllib.parse.urlsplit(url).hostname == "127.0.0.1"  # nothing leaves the machine
        args += ["--collector", url]
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOCKWATCH_")}
    proc = await asyncio.create_subprocess_exec(
        str(PROBE), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _closed_port_url() -> str:
    return f"http://127.0.0.1:{free_tcp_port('127.0.0.1')}"


async def test_rotate_key_end_to_end(tmp_path: Path, collector: FakeCollector) -> None:
    state_dir = tmp_path / "s"
    old = await _enrolled(state_dir, collector)
    before = _measurement(old.key, "measurement-before")  # signed before: still valid after
    code, out, err = await _rotate_cli(state_dir, collector.url)
    assert code == 0, err
    new_key = load_or_create_key(state_dir)
    assert out.strip() == key_id(new_key) != old.key_id
    assert collector.url not in err and "127.0.0.1" not in err
    assert _mode(state_dir / KEY_FILE) == 0o600
    assert not (state_dir / NEW_KEY_FILE).exists()
    assert not (state_dir / OLD_KEY_FILE).exists()
    state = json.loads((state_dir / STATE_FILE).read_text())
    assert (state["key_id"], state["probe_id"]) == (key_id(new_key), old.state.probe_id)
    assert len(collector.rotations) == 1
    assert Identity.open(state_dir).enrolled  # the runner will not re-enroll

    async with CollectorClient([collector.url], new_key) as client:
        assert (await client.checkin(None)).probe_id == old.state.probe_id
    async with CollectorClient([collector.url], old.key) as client:
        with pytest.raises(CollectorRefused) as refused:
            await client.checkin(None)
        assert refused.value.code == "err_revoked_key"
        results = await client.submit([before, _measurement(old.key, "measurement-after")])
    assert [r.status for r in results] == ["accepted", "rejected"]


async def test_a_refused_rotation_changes_nothing(tmp_path: Path, collector: FakeCollector) -> None:
    state_dir = tmp_path / "s"
    old = await _enrolled(state_dir, collector)
    pem = (state_dir / KEY_FILE).read_bytes()
    collector.script("/probes/rotate", 403, error_body("err_revoked_key"))
    code, out, err = await _rotate_cli(state_dir, collector.url)
    assert code == 1
    assert out == ""
    assert "err_revoked_key" in err and "unchanged" in err
    assert (state_dir / KEY_FILE).read_bytes() == pem
    assert sorted(p.name for p in state_dir.iterdir()) == [KEY_FILE, STATE_FILE]
    assert Identity.open(state_dir).key_id == old.key_id


async def test_no_answer_keeps_the_new_key_and_a_retry_resumes(
    tmp_path: Path, collector: FakeCollector
) -> None:
    state_dir = tmp_path / "s"
    old = await _enrolled(state_dir, collector)
    pem = (state_dir / KEY_FILE).read_bytes()
    code, _, err = await _rotate_cli(state_dir, _closed_port_url())
    assert code == 1
    assert "no collector answered" in err and "run rotate-key again" in err
    assert (state_dir / KEY_FILE).read_bytes() == pem
    assert (state_dir / OLD_KEY_FILE).read_bytes() == pem
    assert _mode(state_dir / NEW_KEY_FILE) == 0o600
    assert _mode(state_dir / OLD_KEY_FILE) == 0o600
    pending = (state_dir / NEW_KEY_FILE).read_bytes()
    code, out, err = await _rotate_cli(state_dir, collector.url)
    assert code == 0, err
    assert (state_dir / KEY_FILE).read_bytes() == pending  # the same new key, not another
    assert out.strip() != old.key_id


async def test_an_answer_lost_after_the_collector_rotated(
    tmp_path: Path, collector: FakeCollector
) -> None:
    """The collector committed the rotation but the answer never came back, then a crash."""
    state_dir = tmp_path / "s"
    old = await _enrolled(state_dir, collector)
    new = Ed25519PrivateKey.generate()
    (state_dir / NEW_KEY_FILE).write_bytes(pem(new))
    (state_dir / NEW_KEY_FILE).chmod(0o600)
    async with CollectorClient([collector.url], old.key) as client:
        await client.rotate(new)
    rotated = await rotate_key(state_dir, (collector.url,))
    assert rotated.resumed
    assert rotated.new_key_id == key_id(new) == key_id(load_or_create_key(state_dir))
    assert len(collector.rotations) == 1
    assert json.loads((state_dir / STATE_FILE).read_text())["key_id"] == key_id(new)


async def test_a_resumed_rotation_of_a_revoked_probe_is_given_up(
    tmp_path: Path, collector: FakeCollector
) -> None:
    state_dir = tmp_path / "s"
    old = await _enrolled(state_dir, collector)
    (state_dir / NEW_KEY_FILE).write_bytes(pem(Ed25519PrivateKey.generate()))
    (state_dir / NEW_KEY_FILE).chmod(0o600)
    collector.probes[old.key_id].status = "revoked"
    with pytest.raises(CollectorRefused, match="err_revoked_key"):
        await rotate_key(state_dir, (collector.url,))
    assert key_id(load_or_create_key(state_dir)) == old.key_id
    assert not (state_dir / NEW_KEY_FILE).exists()


async def test_client_refuses_an_answer_for_another_key(collector: FakeCollector) -> None:
    key = Ed25519PrivateKey.generate()
    async with CollectorClient([collector.url], key) as client:
        await client.enroll(None)
        body = json.dumps({"probe_id": "p_0001", "key_id": "0" * 64, "status": "active"})
        collector.script("/probes/rotate", 200, body.encode())
        with pytest.raises(CollectorRefused) as bad:
            await client.rotate(Ed25519PrivateKey.generate())
    assert bad.value.code == ERR_BAD_RESPONSE


async def test_rotation_needs_a_key(tmp_path: Path, collector: FakeCollector) -> None:
    code, _, err = await _rotate_cli(tmp_path / "empty", collector.url)
    assert code == EXIT_INVALID_INPUT
    assert "no key to rotate" in err
    assert collector.received == []


# -- wipe ---------------------------------------------------------------------------


def _probe_state(state_dir: Path) -> None:
    identity = Identity.open(state_dir)
    identity.record(probe_id="p_0001", status="active")
    with Spool(state_dir) as spool:
        spool.put(
            _measurement(identity.key, "measurement-0001"), utc_now_rfc3339(), "measurement-0001"
        )


def test_wipe_with_yes_removes_everything(tmp_path: Path) -> None:
    state_dir = tmp_path / "s"
    _probe_state(state_dir)
    (state_dir / OLD_KEY_FILE).write_bytes(b"old")
    assert (state_dir / f"{SPOOL_FILE}-wal").exists() or (state_dir / SPOOL_FILE).exists()
    result = cli.invoke(app, ["wipe", "--state-dir", str(state_dir), "--yes"])
    assert result.exit_code == 0, result.output
    assert not state_dir.exists()
    assert tmp_path.exists()


def test_wipe_keeps_files_it_did_not_write(tmp_path: Path) -> None:
    state_dir = tmp_path / "s"
    _probe_state(state_dir)
    (state_dir / "notes.txt").write_text("mine")
    result = cli.invoke(app, ["wipe", "--state-dir", str(state_dir), "--yes"])
    assert result.exit_code == 0
    assert [p.name for p in state_dir.iterdir()] == ["notes.txt"]


def test_wipe_asks_first(tmp_path: Path) -> None:
    state_dir = tmp_path / "s"
    _probe_state(state_dir)
    declined = cli.invoke(app, ["wipe", "--state-dir", str(state_dir)], input="n\n")
    assert declined.exit_code == 1
    assert (state_dir / KEY_FILE).exists() and (state_dir / SPOOL_FILE).exists()
    accepted = cli.invoke(app, ["wipe", "--state-dir", str(state_dir)], input="y\n")
    assert accepted.exit_code == 0
    assert not state_dir.exists()


@pytest.mark.parametrize("kind", ["missing", "unrelated", "symlink"])
def test_wipe_refuses_what_is_not_a_state_dir(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "home"
    target.mkdir()
    (target / "thesis.tex").write_text("years of work")
    if kind == "missing":
        target = tmp_path / "nope"
    elif kind == "symlink":
        real = tmp_path / "real"
        _probe_state(real)
        target = tmp_path / "link"
        target.symlink_to(real)
    result = cli.invoke(app, ["wipe", "--state-dir", str(target), "--yes"])
    assert result.exit_code == EXIT_INVALID_INPUT
    assert "refusing to wipe" in result.output
    assert (tmp_path / "home" / "thesis.tex").exists()
    if kind == "symlink":
        assert (tmp_path / "real" / KEY_FILE).exists()
