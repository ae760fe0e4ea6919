"""The durable spool: put/batch/ack/reject, idempotence, the size bound, crash safety, modes."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from probe_agent.protocol.envelope import Envelope, Purpose, public_bytes, sign, verify
from probe_agent.state.spool import (
    DEFAULT_MAX_BYTES,
    OTHER_CODE,
    SPOOL_FILE,
    Spool,
    SpoolError,
    measurement_id_of,
)

KEY = Ed25519PrivateKey.generate()
ROOT = Path(__file__).resolve().parents[3]


def _envelope(mid: str | None = None, padding: int = 0) -> Envelope:
    document = {
        "measurement": {
            "measurement_id": mid or str(uuid.uuid4()),
            "domain": "alive.example",
            "pad": os.urandom(padding).hex(),  # random: does not compress away
        },
        "signed_at": "2026-11-21T15:00:00.000Z",
        "declared": None,
        "via_proxy": False,
    }
    return sign(KEY, Purpose.MEASUREMENT, document)


def _put(spool: Spool, envelope: Envelope, measured_at: str) -> None:
    """``put`` as a caller holding only the envelope calls it."""
    spool.put(envelope, measured_at, measurement_id_of(envelope))


def _at(minute: int) -> str:
    return f"2026-11-21T15:{minute:02d}:00.000Z"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def _permissive_umask() -> Any:
    old = os.umask(0o022)  # the modes must come from the code
    yield
    os.umask(old)


def test_put_batch_ack_reject(tmp_path: Path) -> None:
    envelopes = [_envelope() for _ in range(4)]
    with Spool(tmp_path / "s") as spool:
        for minute, envelope in enumerate(envelopes):
            _put(spool, envelope, _at(minute))
        assert spool.depth() == 4
        items = spool.batch()
        assert [i.envelope for i in items] == envelopes  # byte for byte: still verifies
        for item in items:
            verify(item.envelope, Purpose.MEASUREMENT, public_bytes(KEY))
            assert item.measurement_id == measurement_id_of(item.envelope)
        assert [i.measured_at for i in items] == [
            f"2026-11-21T15:{m:02d}:00.000000Z" for m in range(4)
        ]
        used = spool.bytes_used()
        assert spool.ack([items[0].id, items[1].id]) == 2
        assert spool.reject([items[2].id], "err_timestamp_out_of_window") == 1
        assert spool.ack([items[0].id]) == 0  # already gone
        assert [i.envelope for i in spool.batch()] == envelopes[3:]
        assert 0 < spool.bytes_used() < used
        assert spool.rejected_totals() == {"err_timestamp_out_of_window": 1}
        spool.reject([items[3].id], "HTTP 422 from 203.0.113.9")  # not a code: never stored
        assert spool.rejected_totals() == {"err_timestamp_out_of_window": 1, OTHER_CODE: 1}
        assert (spool.depth(), spool.bytes_used(), spool.evicted_total()) == (0, 0, 0)


def test_batch_is_oldest_first_and_limited(tmp_path: Path) -> None:
    with Spool(tmp_path / "s") as spool:
        late, early, middle = _envelope(), _envelope(), _envelope()
        _put(spool, late, "2026-11-21T17:00:00+02:00")  # 15:00 UTC
        _put(spool, early, "2026-11-21T14:59:59.5Z")
        _put(spool, middle, "2026-11-21T15:00:00.000001Z")
        assert [i.envelope for i in spool.batch()] == [early, late, middle]
        assert [i.envelope for i in spool.batch(limit=2)] == [early, late]


def test_put_is_idempotent_by_measurement_id(tmp_path: Path) -> None:
    with Spool(tmp_path / "s") as spool:
        first = _envelope("0123456789-abc")
        _put(spool, first, _at(0))
        used = spool.bytes_used()
        _put(spool, first, _at(0))
        _put(spool, _envelope("0123456789-abc", padding=10), _at(5))  # re-signed: same id
        assert spool.depth() == 1
        assert spool.bytes_used() == used
        assert spool.batch()[0].envelope == first


@pytest.mark.parametrize(
    ("payload", "measured_at"),
    [
        (b"not json", _at(0)),
        (b'{"measurement": {"domain": "alive.example"}}', _at(0)),
        (b'{"measurement": {"measurement_id": "short"}}', _at(0)),
        (b'{"measurement": {"measurement_id": "0123456789/../x"}}', _at(0)),
        (b'{"measurement": {"measurement_id": "0123456789"}}', "2026-11-21T15:00:00"),
        (b'{"measurement": {"measurement_id": "0123456789"}}', "yesterday"),
    ],
)
def test_refuses_what_is_not_a_signed_measurement(
    tmp_path: Path, payload: bytes, measured_at: str
) -> None:
    with Spool(tmp_path / "s") as spool:
        envelope = Envelope(_envelope().key_id, payload, b"\0" * 64)
        with pytest.raises(SpoolError):
            _put(spool, envelope, measured_at)
        assert spool.depth() == 0


def test_the_bound_evicts_the_oldest_and_counts_them(tmp_path: Path) -> None:
    state_dir = tmp_path / "s"
    envelopes = [_envelope(padding=500) for _ in range(20)]
    with Spool(state_dir, max_bytes=10_000) as spool:
        for minute, envelope in enumerate(envelopes):
            _put(spool, envelope, _at(minute))
            assert spool.bytes_used() <= 10_000
        kept = [i.envelope for i in spool.batch()]
        evicted = spool.evicted_total()
        assert evicted > 0
        assert spool.depth() == len(kept) == 20 - evicted
        assert kept == envelopes[evicted:]  # the oldest went, the newest stay
    with Spool(state_dir, max_bytes=10_000) as spool:
        # Persisted, and never decreasing: acks do not touch it.
        assert spool.evicted_total() == evicted
        spool.ack(i.id for i in spool.batch())
        _put(spool, _envelope(padding=500), _at(59))
        assert spool.evicted_total() == evicted
        _put(spool, _envelope(padding=20_000), _at(59))  # bigger than the whole bound
        assert spool.evicted_total() > evicted
        assert spool.bytes_used() <= 10_000


def test_an_old_measurement_arriving_late_is_evicted_first(tmp_path: Path) -> None:
    with Spool(tmp_path / "probe") as probe:
        _put(probe, _envelope(padding=500), _at(0))
        one = probe.bytes_used()
    with Spool(tmp_path / "s", max_bytes=2 * one + one // 2) as spool:  # room for two
        new = _envelope(padding=500)
        _put(spool, new, _at(30))
        _put(spool, _envelope(padding=500), _at(1))
        _put(spool, _envelope(padding=500), _at(31))
        assert spool.evicted_total() == 1
        assert spool.batch()[0].envelope == new


def test_default_bound_is_a_week_of_the_default_schedule() -> None:
    assert DEFAULT_MAX_BYTES == 200 * 288 * 7 * 2048


def test_everything_survives_reopening(tmp_path: Path) -> None:
    state_dir = tmp_path / "s"
    envelopes = [_envelope() for _ in range(3)]
    with Spool(state_dir) as spool:
        for minute, envelope in enumerate(envelopes):
            _put(spool, envelope, _at(minute))
        spool.reject([spool.batch()[0].id], "err_invalid_domain")
        used = spool.bytes_used()
    with Spool(state_dir) as spool:
        assert [i.envelope for i in spool.batch()] == envelopes[1:]
        assert spool.bytes_used() == used
        assert spool.rejected_totals() == {"err_invalid_domain": 1}


_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from probe_agent.protocol.envelope import Purpose, sign
    from probe_agent.state.spool import Spool

    key = Ed25519PrivateKey.generate()
    spool = Spool(Path(sys.argv[1]))
    for i in range(int(sys.argv[2])):
        document = {"measurement": {"measurement_id": f"measurement-{i:04d}"},
                    "signed_at": "2026-11-21T15:00:00Z", "declared": None, "via_proxy": False}
        mid = document["measurement"]["measurement_id"]
        spool.put(sign(key, Purpose.MEASUREMENT, document), "2026-11-21T15:00:00Z", mid)
    spool.batch()  # handed to a submission that never comes back
    print("ready", flush=True)
    time.sleep(60)
    """
)


def test_a_process_killed_after_put_loses_nothing(tmp_path: Path) -> None:
    state_dir = tmp_path / "s"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(state_dir), "50"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n"
    finally:
        os.kill(child.pid, signal.SIGKILL)  # no close, no checkpoint, no atexit
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert (state_dir / f"{SPOOL_FILE}-wal").exists()  # the commits are still in the WAL
    with Spool(state_dir) as spool:
        items = spool.batch(limit=1000)
        assert [i.measurement_id for i in items] == [f"measurement-{i:04d}" for i in range(50)]
        assert spool.bytes_used() > 0
        assert spool.ack(i.id for i in items) == 50
        assert (spool.depth(), spool.bytes_used()) == (0, 0)  # the counter matched the rows


def test_files_are_private(tmp_path: Path) -> None:
    state_dir = tmp_path / "s"
    with Spool(state_dir) as spool:
        _put(spool, _envelope(), _at(0))
        assert _mode(state_dir) == 0o700
        for name in (SPOOL_FILE, f"{SPOOL_FILE}-wal", f"{SPOOL_FILE}-shm"):
            assert _mode(state_dir / name) == 0o600, name
        journal, synchronous = (
            spool._db.execute("PRAGMA journal_mode").fetchone()[0],
            spool._db.execute("PRAGMA synchronous").fetchone()[0],
        )
        assert (journal, synchronous) == ("wal", 2)  # 2: FULL


def test_a_spool_others_could_read_is_made_private(tmp_path: Path) -> None:
    state_dir = tmp_path / "s"
    Spool(state_dir).close()
    (state_dir / SPOOL_FILE).chmod(0o644)
    Spool(state_dir).close()
    assert _mode(state_dir / SPOOL_FILE) == 0o600


def test_put_takes_the_measurement_id_it_is_handed(tmp_path: Path) -> None:
    """The signer knows the id: the payload is stored as given, not parsed again."""
    opaque = Envelope(_envelope().key_id, b"\x00 not json, and never parsed", b"\0" * 64)
    with Spool(tmp_path / "s") as spool:
        spool.put(opaque, _at(0), "0123456789-opaque")
        (item,) = spool.batch()
    assert (item.measurement_id, item.envelope) == ("0123456789-opaque", opaque)


@pytest.mark.parametrize("mid", ["short", "0123456789/../x", ""])
def test_put_refuses_a_measurement_id_out_of_the_api(tmp_path: Path, mid: str) -> None:
    with Spool(tmp_path / "s") as spool:
        with pytest.raises(SpoolError):
            spool.put(_envelope(), _at(0), mid)
        assert spool.depth() == 0
