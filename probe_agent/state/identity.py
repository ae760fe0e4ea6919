"""The probe's identity: its Ed25519 key and its enrollment state, in ``--state-dir``.

Where this sits in the data flow: before anything is signed. The runner loads
(or, the first time, generates) the key here, enrolls it with a collector and
records what the collector answered in ``state.json``; the key id (the key's
fingerprint, ``envelope.fingerprint``) is what the collector knows the probe by.

Files, in a directory created with mode 0700 (default ``~/.local/state/blockwatch``):

- ``key.pem``: the private key, PKCS#8 PEM, mode 0600. A key file that group or
  others can access is refused, not silently fixed: someone may already have
  copied it, and the volunteer should know (ssh refuses such keys too).
- ``state.json``: ``probe_id``, ``status``, ``role``, the collector that enrolled
  the probe and the key id it enrolled, mode 0600.

Both are written atomically (a temporary file opened 0600 from creation, fsync,
rename, fsync of the directory), so a crash leaves the old file or the new one,
never half of one, and the key is never readable by others even for an instant.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from probe_agent.protocol.envelope import fingerprint, public_bytes
from probe_agent.protocol.errors import IdentityError

DEFAULT_STATE_DIR = Path("~/.local/state/blockwatch")
KEY_FILE = "key.pem"
STATE_FILE = "state.json"
STATE_VERSION = 1
DIR_MODE = 0o700
FILE_MODE = 0o600
_MAX_FILE_BYTES = 64 * 1024  # a key is ~120 bytes, a state file a few hundred
# Errnos of file systems without hard links (some FUSE and network mounts, vfat).
_NO_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK}

log = logging.getLogger("blockwatch.probe.identity")


def key_id(key: Ed25519PrivateKey) -> str:
    """The key id the collector knows this probe by: ``envelope.fingerprint`` of the public key."""
    return fingerprint(public_bytes(key))


def ensure_state_dir(state_dir: Path) -> Path:
    """Create *state_dir* with mode 0700 if absent; refuse one that others can write to."""
    directory = state_dir.expanduser()
    try:
        if not directory.exists():
            directory.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                directory.mkdir(mode=DIR_MODE)
                directory.chmod(DIR_MODE)  # mkdir's mode is masked by the umask
        st = directory.stat()
    except OSError as exc:
        raise IdentityError(f"cannot create the state directory {directory}: {exc}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise IdentityError(f"the state directory {directory} is not a directory")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        # Whoever can write here can replace key.pem with a key of their own.
        raise IdentityError(
            f"refusing the state directory {directory}: group or others can write to it "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 700 {directory}"
        )
    return directory


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_temp(path: Path, data: bytes) -> Path:
    """Write *data* to a new 0600 file next to *path*, fsync it, and return its name."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    # O_EXCL: never reuse a file someone else prepared; the mode applies at creation,
    # so the bytes are never readable by others (fchmod: the umask may remove bits).
    fd = os.open(
        temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE
    )
    try:
        try:
            os.fchmod(fd, FILE_MODE)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp


def atomic_write(path: Path, data: bytes) -> None:
    """Replace *path* with *data* atomically; the file is mode 0600 from its creation."""
    temp = _write_temp(path, data)
    try:
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def atomic_create(path: Path, data: bytes) -> bool:
    """Like ``atomic_write``, but never replace an existing *path*: False when it exists.

    Two processes generating a key at once (``id`` and ``run`` started together)
    must end up with one key, not each with its own: the hard link fails when the
    name already exists, where a rename would silently replace the first key.
    """
    temp = _write_temp(path, data)
    try:
        try:
            os.link(temp, path)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in _NO_LINKS:
                raise
            if path.exists():
                return False
            os.replace(temp, path)  # no hard links here: a plain rename will do
    finally:
        temp.unlink(missing_ok=True)
    _fsync_directory(path.parent)
    return True


def _read_file(path: Path, what: str, *, private: bool) -> bytes:
    """Read a regular file; a *private* one must be accessible to its owner only.

    Follows a symlink: Kubernetes mounts secrets as links into a ``..data`` directory.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as file:
        st = os.fstat(file.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise IdentityError(f"the {what} {path} is not a regular file")
        if private and st.st_mode & 0o077:
            raise IdentityError(
                f"refusing to use the {what} {path}: group or others can access it "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}"
            )
        return file.read(_MAX_FILE_BYTES)


def _load_key(path: Path) -> Ed25519PrivateKey:
    try:
        data = _read_file(path, "key file", private=True)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise IdentityError(f"cannot read the key file {path}: {exc.strerror}") from exc
    try:
        key = load_pem_private_key(data, password=None)
    except TypeError as exc:  # encrypted PEM and no password
        raise IdentityError(f"the key file {path} is encrypted: not supported") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise IdentityError(f"the key file {path} is not a PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityError(f"the key file {path} does not hold an Ed25519 key")
    return key


def load_or_create_key(state_dir: Path) -> Ed25519PrivateKey:
    """The probe's key from ``key.pem`` in *state_dir*, generated on first use."""
    directory = ensure_state_dir(state_dir)
    path = directory / KEY_FILE
    with contextlib.suppress(FileNotFoundError):
        return _load_key(path)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    try:
        created = atomic_create(path, pem)
    except OSError as exc:
        raise IdentityError(f"cannot write the key file {path}: {exc.strerror}") from exc
    if not created:  # another process generated one first: use theirs
        return _load_key(path)
    log.debug("generated a new probe key")
    return key


@dataclass(frozen=True, slots=True)
class ProbeState:
    """What a collector answered at enrollment; valid only for the key it enrolled."""

    key_id: str | None = None
    probe_id: str | None = None
    status: str | None = None
    role: str | None = None
    collector: str | None = None

    def enrolled_as(self, current_key_id: str) -> bool:
        return self.probe_id is not None and self.key_id == current_key_id

    def to_json(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, **dataclasses.asdict(self)}


def load_state(state_dir: Path) -> ProbeState:
    """The saved state, or an empty one (not enrolled) when there is none or it is unreadable."""
    path = ensure_state_dir(state_dir) / STATE_FILE
    try:
        data = json.loads(_read_file(path, "state file", private=False))
    except FileNotFoundError:
        return ProbeState()
    except (OSError, ValueError, IdentityError) as exc:
        # Enrolling the same key again is idempotent (docs/api.md): re-enrolling
        # from an empty state loses nothing, refusing to run would.
        log.warning(
            "ignoring an unreadable %s (%s): enrolling again", STATE_FILE, type(exc).__name__
        )
        return ProbeState()
    if not isinstance(data, dict):
        log.warning("ignoring %s (not a JSON object): enrolling again", STATE_FILE)
        return ProbeState()
    values = {f.name: data.get(f.name) for f in dataclasses.fields(ProbeState)}
    return ProbeState(**{k: v if isinstance(v, str) else None for k, v in values.items()})


def save_state(state_dir: Path, state: ProbeState) -> None:
    """Write the identity fields, keeping what others keep there (last check-in, last error)."""
    path = ensure_state_dir(state_dir) / STATE_FILE
    merged: dict[str, object] = {}
    try:
        existing = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(existing, dict):
            merged.update(existing)
    except (OSError, ValueError):
        pass
    merged.update(state.to_json())
    data = json.dumps(merged, indent=2, sort_keys=True).encode() + b"\n"
    try:
        atomic_write(path, data)
    except OSError as exc:
        raise IdentityError(f"cannot write the state file {path}: {exc.strerror}") from exc


class Identity:
    """The key and the state of one state directory, loaded together."""

    def __init__(self, state_dir: Path, key: Ed25519PrivateKey, state: ProbeState) -> None:
        self.state_dir = state_dir
        self.key = key
        self.key_id = key_id(key)
        self.state = state

    @classmethod
    def open(cls, state_dir: Path) -> Identity:
        key = load_or_create_key(state_dir)
        return cls(state_dir, key, load_state(state_dir))

    @property
    def enrolled(self) -> bool:
        return self.state.enrolled_as(self.key_id)

    def record(self, **changes: str | None) -> None:
        """Update the state (always for the current key) and save it atomically."""
        self.state = dataclasses.replace(self.state, key_id=self.key_id, **changes)
        save_state(self.state_dir, self.state)
