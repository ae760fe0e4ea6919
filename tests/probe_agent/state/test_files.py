"""The state directory's file helpers: what every owner of a file there relies on."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from probe_agent.protocol.errors import IdentityError
from probe_agent.state import identity, spool
from probe_agent.state.files import (
    atomic_write,
    ensure_state_dir,
    is_temporary_of,
    read_regular,
    remove,
)


@pytest.fixture(autouse=True)
def _permissive_umask() -> Iterator[None]:
    old = os.umask(0o022)  # the modes must come from the code
    yield
    os.umask(old)


def test_read_regular_reads_at_most_its_limit(tmp_path: Path) -> None:
    path = tmp_path / "f"
    atomic_write(path, b"0123456789")
    assert read_regular(path, "file", private=True, limit=4) == b"0123"


def test_read_regular_refuses_a_private_file_others_can_read(tmp_path: Path) -> None:
    path = tmp_path / "f"
    atomic_write(path, b"secret")
    path.chmod(0o640)
    with pytest.raises(IdentityError, match="chmod 600"):
        read_regular(path, "key file", private=True, limit=100)
    assert read_regular(path, "state file", private=False, limit=100) == b"secret"


def test_read_regular_refuses_what_is_not_a_file(tmp_path: Path) -> None:
    device = tmp_path / "state.json"
    device.symlink_to(os.devnull)  # a link is followed (Kubernetes secrets); a device is not read
    with pytest.raises(IdentityError, match="not a regular file"):
        read_regular(device, "state file", private=False, limit=100)


def test_ensure_state_dir_refuses_a_directory_others_can_write(tmp_path: Path) -> None:
    directory = ensure_state_dir(tmp_path / "s")
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    directory.chmod(0o770)
    with pytest.raises(IdentityError, match="chmod 700"):
        ensure_state_dir(directory)


def test_temporary_files_are_recognised_by_their_target(tmp_path: Path) -> None:
    owned = identity.FILES + spool.FILES
    assert is_temporary_of(".key.pem.new.0123456789ab.tmp", owned)
    assert is_temporary_of(".state.json.0123456789ab.tmp", owned)
    assert not is_temporary_of(".notes.txt.0123456789ab.tmp", owned)
    assert not is_temporary_of(".key.pem.tmp", owned)


def test_remove_takes_missing_names_in_its_stride(tmp_path: Path) -> None:
    atomic_write(tmp_path / "a", b"a")
    remove(tmp_path, "a", "never-there")
    assert list(tmp_path.iterdir()) == []
