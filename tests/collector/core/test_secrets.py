"""Sealing secrets at rest: the format, the keys and where they come from, the key file."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from collector.core.secrets import (
    KEY_FILE_NAME,
    Keyring,
    Sealer,
    SecretKeyError,
    generate_key,
    is_sealed,
    key_id,
    sealed_key_id,
)
from collector.core.settings import CollectorSettings, Mode

SECRET = "whsec_hXMd0pY7XQSOiZGFLMc+RLmF9uDjFHyl"


def sealer(**values: object) -> Sealer:
    return Sealer(CollectorSettings(mode=Mode.LAB, **values))  # type: ignore[arg-type]


def test_a_sealed_value_is_recognisable_names_its_key_and_hides_the_secret() -> None:
    key = generate_key()
    sealed = sealer(secret_key=key, database_url="postgresql://x@127.0.0.1/x").seal(SECRET)
    assert sealed.startswith(f"bws1:{key_id(key)}:") and is_sealed(sealed)
    assert sealed_key_id(sealed) == key_id(key) and sealed_key_id(SECRET) is None
    assert SECRET not in sealed and SECRET.removeprefix("whsec_") not in sealed
    assert sealer(secret_key=key, database_url="postgresql://x@127.0.0.1/x").open(sealed) == SECRET


def test_two_seals_of_one_value_differ() -> None:
    # Fernet's random IV: equal secrets are not visible as equal in the database.
    ring = Keyring((generate_key(),), "test")
    assert ring.seal(SECRET) != ring.seal(SECRET)


def test_a_wrong_key_fails_clearly_naming_key_ids_only() -> None:
    sealing, other = generate_key(), generate_key()
    sealed = Keyring((sealing,), "test").seal(SECRET)
    with pytest.raises(SecretKeyError) as caught:
        Keyring((other,), "BLOCKWATCH_SECRET_KEY").open(sealed)
    assert caught.value.code == "err_unknown_secret_key"
    assert key_id(sealing) in caught.value.message and key_id(other) in caught.value.message
    assert sealing not in caught.value.message and other not in caught.value.message


def test_a_tampered_token_fails_as_unopenable() -> None:
    ring = Keyring((generate_key(),), "test")
    sealed = ring.seal(SECRET)
    tampered = sealed[:-6] + ("A" if sealed[-6] != "A" else "B") + sealed[-5:]
    with pytest.raises(SecretKeyError, match="sealed with key"):
        ring.open(tampered)


def test_a_malformed_key_is_refused_without_being_echoed() -> None:
    bogus = "not-a-fernet-key-but-maybe-a-password"
    with pytest.raises(SecretKeyError) as caught:
        sealer(secret_key=f"{generate_key()},{bogus}").keyring()
    assert caught.value.code == "err_bad_secret_key"
    assert "key 2 of 2" in caught.value.message and bogus not in caught.value.message


def test_the_first_key_seals_all_open_and_reseal_moves_to_the_first() -> None:
    old, new = generate_key(), generate_key()
    sealed_old = Keyring((old,), "test").seal(SECRET)
    both = Keyring((new, old), "test")
    assert both.open(sealed_old) == SECRET  # MultiFernet: every key opens
    assert sealed_key_id(both.seal(SECRET)) == key_id(new)
    moved = both.reseal(sealed_old)
    assert sealed_key_id(moved) == key_id(new)
    assert Keyring((new,), "test").open(moved) == SECRET  # the old key may go now
    assert both.reseal(moved) == moved  # already with the first key: unchanged
    assert sealed_key_id(both.reseal(SECRET)) == key_id(new)  # a clear value gets sealed


def test_a_clear_value_opens_as_it_is_without_any_key() -> None:
    # Values an older version left clear are read until the startup seals them.
    keyless = sealer(database_url="postgresql://x@127.0.0.1/x")
    assert keyless.open(SECRET) == SECRET
    with pytest.raises(SecretKeyError) as caught:
        keyless.seal(SECRET)
    assert caught.value.code == "err_no_secret_key"
    assert "BLOCKWATCH_SECRET_KEY" in caught.value.message


def test_postgresql_in_production_without_a_key_refuses_to_start(tmp_path: Path) -> None:
    common = {
        "database_url": "postgresql://x@127.0.0.1/x",
        "admin_token": "a" * 32,
        "key_file": tmp_path / "collector-key.pem",
    }
    with pytest.raises(ValidationError, match="BLOCKWATCH_SECRET_KEY"):
        CollectorSettings(**common)  # type: ignore[arg-type]
    CollectorSettings(**common, secret_key=generate_key())  # type: ignore[arg-type]


def test_sqlite_makes_a_private_key_file_beside_the_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/blockwatch.db"
    first = sealer(database_url=url)
    sealed = first.seal(SECRET)
    path = tmp_path / KEY_FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sealed_key_id(sealed) == key_id(path.read_text().split()[0])
    # The key is in the file, not the database: another process (production mode too,
    # since the file exists) opens what this one sealed.
    opened = subprocess.run(
        [sys.executable, "-c", _OPEN, url, sealed],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    assert opened.stdout.strip() == SECRET


_OPEN = """
import sys
from collector.core.secrets import Sealer
from collector.core.settings import CollectorSettings
settings = CollectorSettings(database_url=sys.argv[1], admin_token="a" * 32)
print(Sealer(settings).open(sys.argv[2]))
"""

_KEY_ID = """
import sys
from collector.core.secrets import Sealer
from collector.core.settings import CollectorSettings, Mode
print(Sealer(CollectorSettings(database_url=sys.argv[1], mode=Mode.LAB)).keyring().ids[0])
"""


def test_processes_starting_at_once_end_with_one_key(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/blockwatch.db"
    command = [sys.executable, "-c", _KEY_ID, url]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(6)]
    ids = {run.communicate(timeout=60)[0].strip() for run in runs}
    assert all(run.returncode == 0 for run in runs)
    assert ids == {key_id((tmp_path / KEY_FILE_NAME).read_text().strip())}
    assert [p.name for p in tmp_path.iterdir()] == [KEY_FILE_NAME]  # no temporary left


def test_a_key_file_others_can_read_is_refused_not_fixed(tmp_path: Path) -> None:
    path = tmp_path / KEY_FILE_NAME
    key = generate_key()
    path.write_text(key + "\n")
    path.chmod(0o644)
    with pytest.raises(SecretKeyError, match="chmod 600"):
        sealer(database_url=f"sqlite:///{tmp_path}/blockwatch.db").keyring()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644 and path.read_text() == key + "\n"


def test_the_key_file_may_hold_several_keys_the_first_sealing(tmp_path: Path) -> None:
    old, new = generate_key(), generate_key()
    path = tmp_path / KEY_FILE_NAME
    path.write_text(f"{new}\n{old}\n")
    path.chmod(0o600)
    ring = sealer(database_url=f"sqlite:///{tmp_path}/blockwatch.db").keyring()
    assert ring.ids == (key_id(new), key_id(old)) and ring.source == str(path)
    assert new not in repr(ring) and old not in repr(ring)


def test_the_variable_wins_over_the_key_file(tmp_path: Path) -> None:
    path = tmp_path / KEY_FILE_NAME
    path.write_text(generate_key() + "\n")
    path.chmod(0o600)
    given = generate_key()
    ring = sealer(database_url=f"sqlite:///{tmp_path}/b.db", secret_key=given).keyring()
    assert ring.ids == (key_id(given),) and ring.source == "BLOCKWATCH_SECRET_KEY"
