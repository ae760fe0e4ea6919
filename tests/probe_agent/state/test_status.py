"""``status``: what the daemon records, what is shown, and the exit status of a HEALTHCHECK."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from probe_agent.cli import EXIT_INVALID_INPUT, app
from probe_agent.protocol.envelope import Purpose, sign
from probe_agent.state.identity import (
    KEY_FILE,
    STATE_FILE,
    Identity,
    load_or_create_key,
    load_state,
    update_state_fields,
)
from probe_agent.state.spool import Spool
from probe_agent.state.status import (
    cached_schedule,
    read_status,
    record_checkin,
    record_error,
    record_schedule,
)

cli = CliRunner()
NOW = datetime(2026, 11, 21, 15, 0, tzinfo=UTC)


def _status(state_dir: Path) -> tuple[int, dict[str, object]]:
    result = cli.invoke(app, ["status", "--state-dir", str(state_dir), "--json"])
    return result.exit_code, json.loads(result.stdout)


def _enrolled(state_dir: Path) -> Identity:
    identity = Identity.open(state_dir)
    identity.record(probe_id="p_0001", status="active", role="probe", collector="http://c")
    return identity


def test_a_probe_never_run_is_healthy_and_nothing_is_created(tmp_path: Path) -> None:
    state_dir = tmp_path / "never"
    code, shown = _status(state_dir)
    assert code == 0
    assert shown["healthy"] is True
    assert shown["key_id"] is None
    assert shown["last_checkin_at"] is None
    assert not state_dir.exists()


def test_json_shows_everything(tmp_path: Path) -> None:
    state_dir = tmp_path / "s"
    identity = _enrolled(state_dir)
    record_checkin(state_dir, datetime.now(UTC), interval_seconds=60)
    record_error(state_dir, "collector_unreachable")
    with Spool(state_dir) as spool:
        for _ in range(3):
            mid = str(uuid.uuid4())
            document = {"measurement": {"measurement_id": mid}}
            envelope = sign(identity.key, Purpose.MEASUREMENT, document)
            spool.put(envelope, "2026-11-21T15:00:00Z", mid)
        spool.reject([spool.batch()[0].id], "err_invalid_domain")
    code, shown = _status(state_dir)
    assert code == 0
    assert shown["healthy"] is True
    assert shown["probe_id"] == "p_0001"
    assert shown["key_id"] == identity.key_id
    assert shown["enrolled"] is True
    assert shown["interval_seconds"] == 60.0
    assert shown["last_error"] == "collector_unreachable"
    assert shown["spool_depth"] == 2
    assert shown["evicted_total"] == 0
    assert shown["rejected"] == {"err_invalid_domain": 1}
    assert isinstance(shown["spool_bytes"], int) and shown["spool_bytes"] > 0
    text = cli.invoke(app, ["status", "--state-dir", str(state_dir)])
    assert text.exit_code == 0
    assert "health:        ok" in text.stdout
    assert "2 waiting" in text.stdout


def test_recording_keeps_the_identity(tmp_path: Path) -> None:
    state_dir = tmp_path / "s"
    identity = _enrolled(state_dir)
    record_checkin(state_dir, NOW)
    record_error(state_dir, "err_rate_limited", NOW)
    state = load_state(state_dir)
    assert (state.probe_id, state.key_id) == ("p_0001", identity.key_id)
    raw = json.loads((state_dir / STATE_FILE).read_text())
    assert raw["last_checkin_at"] == "2026-11-21T15:00:00Z"
    assert raw["last_error"] == "err_rate_limited"
    assert (state_dir / STATE_FILE).stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    "message",
    ["connect to 203.0.113.9 failed", "alive.example", "Err_Upper", "", "x" * 65, "a-b"],
)
def test_only_short_codes_are_recorded(tmp_path: Path, message: str) -> None:
    with pytest.raises(ValueError, match="error code"):
        record_error(tmp_path / "s", message)
    assert not (tmp_path / "s" / STATE_FILE).exists()


@pytest.mark.parametrize(
    ("checkin_age", "interval", "error", "healthy"),
    [
        (timedelta(minutes=14), None, None, True),  # within 3 x 300 s
        (timedelta(minutes=16), None, None, False),
        (timedelta(minutes=2), 30.0, None, False),  # 3 x 30 s
        (timedelta(seconds=80), 30.0, "err_internal", True),
        (None, None, "collector_unreachable", False),  # ran, never checked in
        (None, None, None, True),  # never ran
    ],
)
def test_health(
    tmp_path: Path,
    checkin_age: timedelta | None,
    interval: float | None,
    error: str | None,
    healthy: bool,
) -> None:
    state_dir = tmp_path / "s"
    load_or_create_key(state_dir)
    if checkin_age is not None:
        record_checkin(state_dir, NOW - checkin_age, interval_seconds=interval)
    if error is not None:
        record_error(state_dir, error, NOW)
    assert read_status(state_dir, now=NOW).healthy is healthy
    code, shown = _status_at(state_dir, checkin_age, interval, error)
    assert (code == 0) is healthy
    assert shown["healthy"] is healthy


def _status_at(
    state_dir: Path, age: timedelta | None, interval: float | None, error: str | None
) -> tuple[int, dict[str, object]]:
    """The command at the real time: re-record relative to now, then run it."""
    now = datetime.now(UTC)
    if age is not None:
        record_checkin(state_dir, now - age, interval_seconds=interval)
    return _status(state_dir)


def test_a_key_others_can_read_is_reported(tmp_path: Path) -> None:
    state_dir = tmp_path / "s"
    load_or_create_key(state_dir)
    (state_dir / KEY_FILE).chmod(0o644)
    result = cli.invoke(app, ["status", "--state-dir", str(state_dir)])
    assert result.exit_code == EXIT_INVALID_INPUT
    assert "chmod 600" in result.output


def test_saving_the_identity_keeps_the_last_checkin(tmp_path: Path) -> None:
    from probe_agent.state.identity import ProbeState, save_state

    when = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
    record_checkin(tmp_path, when)
    save_state(tmp_path, ProbeState(key_id="k" * 64, probe_id="p_1", status="active"))
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["probe_id"] == "p_1"
    assert read_status(tmp_path).last_checkin_at is not None


WHEN_SHOWN = "2026-11-21T12:00:00Z"


def test_enrolling_keeps_the_recorded_checkin_and_error(tmp_path: Path) -> None:
    """state.json has one owner: enrolling merges into it, never rewrites it."""
    when = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
    record_checkin(tmp_path, when, interval_seconds=60)
    record_error(tmp_path, "collector_unreachable", when)
    _enrolled(tmp_path)  # what the round records when the probe enrolls
    status = read_status(tmp_path, now=when)
    assert (status.last_checkin_at, status.interval_seconds) == (WHEN_SHOWN, 60)
    assert (status.last_error, status.last_error_at) == ("collector_unreachable", WHEN_SHOWN)
    assert status.enrolled


def test_recording_keeps_the_enrollment(tmp_path: Path) -> None:
    identity = _enrolled(tmp_path)
    record_checkin(tmp_path, NOW)
    record_error(tmp_path, "collector_unreachable", NOW)
    assert load_state(tmp_path) == identity.state


def test_a_long_schedule_keeps_the_enrollment(tmp_path: Path) -> None:
    """One reader of state.json: a long recorded target list never hides the enrollment."""
    _enrolled(tmp_path)
    targets = [f"instance-{i:05d}.example.social" for i in range(3000)]  # ~100 KB of JSON
    record_schedule(tmp_path, 180, targets)
    assert load_state(tmp_path).probe_id == "p_0001"
    assert Identity.open(tmp_path).enrolled
    assert read_status(tmp_path).enrolled
    assert cached_schedule(tmp_path).targets == targets


def test_the_schedule_keeps_the_ports_of_its_targets(tmp_path: Path) -> None:
    """An unreachable collector's round measures its own names at their ports too."""
    record_schedule(tmp_path, 180, ["alive.example", "bw.example"], {"bw.example": 8443})
    assert cached_schedule(tmp_path).ports == {"bw.example": 8443}
    record_schedule(tmp_path, 180, ["alive.example"])  # the next check-in had none
    assert cached_schedule(tmp_path).ports == {}


def test_damaged_ports_in_the_state_file_are_dropped(tmp_path: Path) -> None:
    _enrolled(tmp_path)
    update_state_fields(
        tmp_path,
        {
            "targets": ["a.example", "b.example"],
            "target_ports": {"a.example": 8443, "b.example": "x", "gone.example": 443},
        },
    )
    assert cached_schedule(tmp_path).ports == {"a.example": 8443}
