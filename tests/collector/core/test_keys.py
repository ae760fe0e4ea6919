"""The collector's key: made once beside SQLite, shared, refused when unsafe or missing."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from pydantic import ValidationError

from collector.core.keys import (
    DEFAULT_KEY_FILE,
    KeyFileError,
    collector_key,
    create_key,
    load_key,
    write_new_key,
)
from collector.core.settings import CollectorSettings, Mode
from tests.collector.helpers import ADMIN_TOKEN

COLLECTOR = str(Path(sys.executable).parent / "blockwatch-collector")
PG = "postgresql://postgres@127.0.0.1:5432/postgres"  # never connected to here


def settings(
    database_url: str, mode: Mode = Mode.LAB, key_file: Path | None = None
) -> CollectorSettings:
    return CollectorSettings(
        database_url=database_url,
        mode=mode,
        admin_token=ADMIN_TOKEN + "-long-enough",
        secret_key=Fernet.generate_key().decode(),  # PostgreSQL in production needs one too
        key_file=key_file,
    )


def test_a_lone_sqlite_instance_creates_its_key_beside_the_database_once(tmp_path: Path) -> None:
    config = settings(f"sqlite:///{tmp_path}/db/blockwatch.db", Mode.PRODUCTION)
    first = collector_key(config)
    path = tmp_path / "db" / DEFAULT_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert collector_key(config).key_id == first.key_id  # the next start reads it back
    assert len(first.public_key) == 32 and len(first.key_id) == 64


def test_two_processes_creating_at_once_end_with_one_key(tmp_path: Path) -> None:
    path = tmp_path / "collector-key.pem"
    winner = create_key(path)
    loser = create_key(path)  # as a second worker that lost the race
    assert loser.key_id == winner.key_id == load_key(path).key_id
    assert [p.name for p in tmp_path.iterdir()] == ["collector-key.pem"]  # no temporary left


def test_postgresql_in_production_needs_a_shared_key_file(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="keygen --out PATH"):
        settings(PG, Mode.PRODUCTION)
    missing = tmp_path / "shared.pem"
    with pytest.raises(KeyFileError, match="keygen --out") as refused:
        collector_key(settings(PG, Mode.PRODUCTION, key_file=missing))
    assert refused.value.code == "err_key_file_missing" and not missing.exists()
    made = write_new_key(missing)
    assert collector_key(settings(PG, Mode.PRODUCTION, key_file=missing)).key_id == made.key_id


def test_the_lab_without_a_key_file_signs_with_a_key_of_its_own() -> None:
    config = settings(PG, Mode.LAB)
    assert collector_key(config).key_id != collector_key(config).key_id  # nothing on disk


def test_a_key_others_can_read_or_that_is_not_ed25519_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    write_new_key(path)
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_key(path)
    path.chmod(0o600)
    path.write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(KeyFileError, match="not a PEM private key"):
        load_key(path)


def test_keygen_writes_a_new_key_and_never_replaces_one(tmp_path: Path) -> None:
    path = tmp_path / "replicas" / "collector-key.pem"
    made = subprocess.run(
        [COLLECTOR, "keygen", "--out", str(path)], capture_output=True, text=True, check=False
    )
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip() == load_key(path).key_id
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    before = path.read_bytes()
    again = subprocess.run(
        [COLLECTOR, "keygen", "--out", str(path)], capture_output=True, text=True, check=False
    )
    assert again.returncode == 2 and "never replaced" in again.stderr
    assert path.read_bytes() == before
