"""The probe's key and state files: modes, atomic writes, refusing unsafe keys, stable ids."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from probe_agent.protocol.envelope import fingerprint, public_bytes
from probe_agent.protocol.errors import IdentityError
from probe_agent.state import identity
from probe_agent.state.identity import (
    KEY_FILE,
    STATE_FILE,
    Identity,
    ProbeState,
    atomic_create,
    atomic_write,
    key_id,
    load_or_create_key,
    load_state,
    save_state,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


@pytest.fixture(autouse=True)
def _permissive_umask() -> Any:
    # The modes must come from the code, not from a strict umask of the test machine.
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_first_use_creates_directory_0700_and_key_0600(tmp_path: Path) -> None:
    state_dir = tmp_path / "deep" / "blockwatch"
    key = load_or_create_key(state_dir)
    assert _mode(state_dir) == 0o700
    key_file = state_dir / KEY_FILE
    assert _mode(key_file) == 0o600
    pem = key_file.read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted
    assert pem == key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    assert _leftovers(state_dir) == []


def test_key_and_fingerprint_are_stable_across_loads(tmp_path: Path) -> None:
    first = load_or_create_key(tmp_path / "s")
    second = load_or_create_key(tmp_path / "s")
    assert public_bytes(first) == public_bytes(second)
    assert key_id(first) == key_id(second) == fingerprint(public_bytes(first))
    assert len(key_id(first)) == 64
    assert key_id(first) != key_id(load_or_create_key(tmp_path / "other"))


def test_tilde_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    load_or_create_key(Path("~/.local/state/blockwatch"))
    assert (tmp_path / ".local/state/blockwatch" / KEY_FILE).is_file()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o660])
def test_refuses_a_key_others_can_access(tmp_path: Path, mode: int) -> None:
    load_or_create_key(tmp_path)
    key_file = tmp_path / KEY_FILE
    before = key_file.read_bytes()
    key_file.chmod(mode)
    with pytest.raises(IdentityError) as info:
        load_or_create_key(tmp_path)
    message = str(info.value)
    assert f"{mode:04o}" in message
    assert f"chmod 600 {key_file}" in message
    assert key_file.read_bytes() == before  # refused, never replaced
    assert _mode(key_file) == mode  # nor silently "fixed"


def test_accepts_a_read_only_key(tmp_path: Path) -> None:
    first = load_or_create_key(tmp_path)
    (tmp_path / KEY_FILE).chmod(0o400)
    assert key_id(load_or_create_key(tmp_path)) == key_id(first)


def test_follows_a_symlinked_key_and_checks_its_target(tmp_path: Path) -> None:
    # Kubernetes mounts secrets as symlinks into a ..data directory.
    secret = tmp_path / "secret"
    secret.mkdir(mode=0o700)
    original = load_or_create_key(secret)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / KEY_FILE).symlink_to(secret / KEY_FILE)
    assert key_id(load_or_create_key(state)) == key_id(original)
    (secret / KEY_FILE).chmod(0o644)
    with pytest.raises(IdentityError, match="group or others"):
        load_or_create_key(state)


def test_refuses_a_state_directory_others_can_write(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(IdentityError, match="chmod 700"):
        load_or_create_key(shared)
    assert list(shared.iterdir()) == []


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"not a key at all\n", "not a PEM private key"),
        (
            Ed25519PrivateKey.generate().private_bytes(
                Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(b"secret")
            ),
            "encrypted",
        ),
    ],
    ids=["garbage", "encrypted"],
)
def test_refuses_a_corrupt_or_encrypted_key_without_replacing_it(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    key_file = tmp_path / KEY_FILE
    key_file.write_bytes(content)
    key_file.chmod(0o600)
    with pytest.raises(IdentityError, match=reason):
        load_or_create_key(tmp_path)
    assert key_file.read_bytes() == content


def test_refuses_a_key_of_another_algorithm(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    key_file = tmp_path / KEY_FILE
    key_file.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
        )
    )
    key_file.chmod(0o600)
    with pytest.raises(IdentityError, match="Ed25519"):
        load_or_create_key(tmp_path)


def test_temporary_file_is_0600_and_exclusive_from_creation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[tuple[str, int, int]] = []
    real_open = os.open

    def spy(path: Any, flags: int, mode: int = 0o777, **kwargs: Any) -> int:
        opened.append((str(path), flags, mode))
        return real_open(path, flags, mode, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    load_or_create_key(tmp_path)
    creates = [(p, f, m) for p, f, m in opened if f & os.O_CREAT]
    assert len(creates) == 1
    path, flags, mode = creates[0]
    assert Path(path).parent == tmp_path
    assert Path(path).name != KEY_FILE  # written under another name, then published
    assert mode == 0o600
    assert flags & os.O_EXCL
    assert flags & os.O_NOFOLLOW


def test_atomic_write_replaces_the_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")
    target.chmod(0o644)
    atomic_write(target, b"new contents")
    assert target.read_bytes() == b"new contents"
    assert _mode(target) == 0o600
    assert _leftovers(tmp_path) == []


def test_atomic_write_failure_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        atomic_write(target, b"new")
    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_atomic_create_never_replaces(tmp_path: Path) -> None:
    target = tmp_path / "k"
    assert atomic_create(target, b"first") is True
    assert atomic_create(target, b"second") is False
    assert target.read_bytes() == b"first"
    assert _leftovers(tmp_path) == []


def test_a_key_generated_meanwhile_by_another_process_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = Ed25519PrivateKey.generate()
    real_create = identity.atomic_create

    def racing(path: Path, data: bytes) -> bool:
        # Another `blockwatch-probe` published its key between our read and our write.
        real_create(path, other.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
        return real_create(path, data)

    monkeypatch.setattr(identity, "atomic_create", racing)
    assert key_id(load_or_create_key(tmp_path)) == key_id(other)


def test_state_round_trip_is_atomic_and_private(tmp_path: Path) -> None:
    assert load_state(tmp_path) == ProbeState()
    state = ProbeState(
        key_id="ab" * 32, probe_id="p_1", status="active", role="probe", collector="https://c"
    )
    save_state(tmp_path, state)
    assert _mode(tmp_path / STATE_FILE) == 0o600
    assert load_state(tmp_path) == state
    assert json.loads((tmp_path / STATE_FILE).read_text())["version"] == 1
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"probe_id": 7}'])
def test_unreadable_state_means_not_enrolled(tmp_path: Path, content: str) -> None:
    (tmp_path / STATE_FILE).write_text(content)
    assert load_state(tmp_path).probe_id is None


def test_identity_is_enrolled_only_for_the_key_it_enrolled(tmp_path: Path) -> None:
    ident = Identity.open(tmp_path)
    assert not ident.enrolled
    ident.record(probe_id="p_1", status="active")
    assert Identity.open(tmp_path).enrolled
    assert load_state(tmp_path).key_id == ident.key_id
    # A new key (the old one deleted) must enroll again, whatever state.json says.
    (tmp_path / KEY_FILE).unlink()
    fresh = Identity.open(tmp_path)
    assert fresh.key_id != ident.key_id
    assert not fresh.enrolled


def test_a_rotation_stages_keeps_and_installs_keys(tmp_path: Path) -> None:
    old = load_or_create_key(tmp_path)
    new, resumed = identity.stage_new_key(tmp_path)
    assert not resumed
    again, resumed = identity.stage_new_key(tmp_path)  # an interrupted rotation's key
    assert resumed
    assert key_id(again) == key_id(new)
    identity.keep_old_key(tmp_path, old)
    assert {_mode(tmp_path / n) for n in (identity.NEW_KEY_FILE, identity.OLD_KEY_FILE)} == {0o600}
    save_state(tmp_path, ProbeState(key_id=key_id(old), probe_id="p_1", status="active"))
    identity.install_new_key(tmp_path, {"status": "active"})
    assert key_id(load_or_create_key(tmp_path)) == key_id(new)
    assert load_state(tmp_path) == ProbeState(key_id=key_id(new), probe_id="p_1", status="active")
    assert sorted(p.name for p in tmp_path.iterdir()) == [KEY_FILE, STATE_FILE]


def test_a_refused_rotation_leaves_only_the_current_key(tmp_path: Path) -> None:
    old = load_or_create_key(tmp_path)
    identity.stage_new_key(tmp_path)
    identity.keep_old_key(tmp_path, old)
    identity.discard_rotation(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [KEY_FILE]
    assert key_id(load_or_create_key(tmp_path)) == key_id(old)
