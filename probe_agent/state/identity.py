"""The probe's identity: its Ed25519 key and its enrollment, in ``--state-dir``.

Where this sits in the data flow: before anything is signed. The round loads
(or, the first time, generates) the key here, enrolls it with a collector and
records what the collector answered in ``state.json``; the key id (the key's
fingerprint, ``envelope.fingerprint``) is what the collector knows the probe by.

This module owns the key files, in a directory created with mode 0700 (default
``~/.local/state/blockwatch``), all PKCS#8 PEM, mode 0600, written atomically
(``files``):

- ``key.pem``: the private key. A key file that group or others can access is
  refused, not silently fixed: someone may already have copied it, and the
  volunteer should know (ssh refuses such keys too).
- ``key.pem.new`` and ``key.pem.old``: a key rotation under way
  (``daemon.rotation`` holds the conversation with the collector):
  ``stage_new_key`` writes the new key before the collector is asked,
  ``keep_old_key`` a copy of the current one, ``install_new_key`` puts the new
  key in place once accepted, ``discard_rotation`` forgets both after a refusal.

It owns ``state.json`` too, mode 0600, for all of its fields: the enrollment
(``probe_id``, ``status``, ``role``, the collector that enrolled the probe and
the key id it enrolled) and what ``status`` records there (last check-in and
its schedule, last error). Every change goes through ``update_state_fields``,
which merges it into what the file holds: enrolling keeps the recorded
check-in, and recording a check-in keeps the enrollment.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
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
from probe_agent.protocol.messages import N_, Message
from probe_agent.state.files import (
    atomic_create,
    atomic_write,
    ensure_state_dir,
    fsync_directory,
    read_regular,
    remove,
)

DEFAULT_STATE_DIR = Path("~/.local/state/blockwatch")
KEY_FILE = "key.pem"
NEW_KEY_FILE = KEY_FILE + ".new"
OLD_KEY_FILE = KEY_FILE + ".old"
STATE_FILE = "state.json"
FILES = (KEY_FILE, NEW_KEY_FILE, OLD_KEY_FILE, STATE_FILE)  # what `wipe` removes of ours
STATE_VERSION = 1
MAX_KEY_BYTES = 64 * 1024  # a key is ~120 bytes
# state.json keeps a check-in's targets (``status.record_schedule``); the collector
# client reads answers of at most 4 MiB, so a recorded schedule fits this bound.
MAX_STATE_BYTES = 4 * 1024 * 1024

log = logging.getLogger("blockwatch.probe.identity")


def key_id(key: Ed25519PrivateKey) -> str:
    """The key id the collector knows this probe by: ``envelope.fingerprint`` of the public key."""
    return fingerprint(public_bytes(key))


def pem(key: Ed25519PrivateKey) -> bytes:
    """*key* as the key files hold it: PKCS#8 PEM, unencrypted (the file's mode guards it)."""
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def load_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 key in *path*; ``FileNotFoundError`` when there is none.

    Raises ``IdentityError`` for a key others can access, unreadable or not Ed25519.
    """
    try:
        data = read_regular(path, Message(N_("key file")), private=True, limit=MAX_KEY_BYTES)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise IdentityError(
            N_("cannot read the key file %(path)s: %(reason)s"), path=path, reason=exc.strerror
        ) from exc
    try:
        key = load_pem_private_key(data, password=None)
    except TypeError as exc:  # encrypted PEM and no password
        raise IdentityError(
            N_("the key file %(path)s is encrypted: not supported"), path=path
        ) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise IdentityError(
            N_("the key file %(path)s is not a PEM private key"), path=path
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityError(N_("the key file %(path)s does not hold an Ed25519 key"), path=path)
    return key


def read_key(directory: Path) -> Ed25519PrivateKey | None:
    """The probe's key in *directory*, or None when it has none yet (nothing is created)."""
    with contextlib.suppress(FileNotFoundError):
        return load_key(directory / KEY_FILE)
    return None


def _write_key(path: Path, key: Ed25519PrivateKey) -> None:
    try:
        atomic_write(path, pem(key))
    except OSError as exc:
        raise IdentityError(
            N_("cannot write %(path)s: %(reason)s"), path=path, reason=exc.strerror
        ) from exc


def load_or_create_key(state_dir: Path) -> Ed25519PrivateKey:
    """The probe's key from ``key.pem`` in *state_dir*, generated on first use."""
    directory = ensure_state_dir(state_dir)
    path = directory / KEY_FILE
    with contextlib.suppress(FileNotFoundError):
        return load_key(path)
    key = Ed25519PrivateKey.generate()
    try:
        created = atomic_create(path, pem(key))
    except OSError as exc:
        raise IdentityError(
            N_("cannot write the key file %(path)s: %(reason)s"), path=path, reason=exc.strerror
        ) from exc
    if not created:  # another process generated one first: use theirs
        return load_key(path)
    log.debug("generated a new probe key")
    return key


# -- a key rotation's files (the conversation with the collector: daemon.rotation) --


def stage_new_key(state_dir: Path) -> tuple[Ed25519PrivateKey, bool]:
    """The new key of a rotation, saved as ``key.pem.new`` before the collector is asked.

    Returns (key, resumed): an interrupted rotation's ``key.pem.new`` is used
    again (its answer may have been lost after the collector accepted it).
    """
    path = ensure_state_dir(state_dir) / NEW_KEY_FILE
    with contextlib.suppress(FileNotFoundError):
        return load_key(path), True
    key = Ed25519PrivateKey.generate()
    _write_key(path, key)
    return key, False


def keep_old_key(state_dir: Path, key: Ed25519PrivateKey) -> None:
    """Keep a copy of the current key as ``key.pem.old`` until the rotation succeeded."""
    _write_key(ensure_state_dir(state_dir) / OLD_KEY_FILE, key)


def install_new_key(state_dir: Path, enrollment: dict[str, str]) -> Ed25519PrivateKey:
    """The collector accepted ``key.pem.new``: it becomes ``key.pem``, the old copy goes.

    *enrollment* (``probe_id``, ``status``) is what the collector answered, if anything;
    ``state.json`` gets the new key id with it.
    """
    directory = ensure_state_dir(state_dir)
    new = load_key(directory / NEW_KEY_FILE)
    os.replace(directory / NEW_KEY_FILE, directory / KEY_FILE)
    fsync_directory(directory)
    update_state_fields(directory, {**enrollment, "key_id": key_id(new)})
    remove(directory, OLD_KEY_FILE)
    return new


def discard_rotation(state_dir: Path) -> None:
    """The collector refused the rotation: forget ``key.pem.new`` and ``key.pem.old``."""
    remove(ensure_state_dir(state_dir), NEW_KEY_FILE, OLD_KEY_FILE)


# -- state.json: every field of it, the enrollment's and status's ------------------


def read_state_fields(directory: Path) -> dict[str, Any]:
    """The fields of ``state.json`` in *directory*; none when it is missing or unreadable.

    An unreadable file is ignored with a warning: enrolling the same key again
    is idempotent (docs/api.md) and a check-in records the rest, so starting
    from an empty state loses nothing, refusing to run would.
    """
    path = directory / STATE_FILE
    try:
        raw = read_regular(path, Message(N_("state file")), private=False, limit=MAX_STATE_BYTES)
        data = json.loads(raw)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, IdentityError) as exc:
        log.warning(
            "ignoring an unreadable %s (%s): enrolling again", STATE_FILE, type(exc).__name__
        )
        return {}
    if not isinstance(data, dict):
        log.warning("ignoring %s (not a JSON object): enrolling again", STATE_FILE)
        return {}
    return data


def update_state_fields(state_dir: Path, changes: dict[str, Any]) -> None:
    """Merge *changes* into ``state.json`` atomically, keeping every other field."""
    directory = ensure_state_dir(state_dir)
    path = directory / STATE_FILE
    data = read_state_fields(directory) | changes
    text = json.dumps(data, indent=2, sort_keys=True).encode() + b"\n"
    try:
        atomic_write(path, text)
    except OSError as exc:
        raise IdentityError(
            N_("cannot write the state file %(path)s: %(reason)s"), path=path, reason=exc.strerror
        ) from exc


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

    @classmethod
    def from_fields(cls, data: dict[str, Any]) -> ProbeState:
        """The enrollment among the fields of ``state.json`` (a field not a string: absent)."""
        values = {f.name: data.get(f.name) for f in dataclasses.fields(cls)}
        return cls(**{k: v if isinstance(v, str) else None for k, v in values.items()})


def load_state(state_dir: Path) -> ProbeState:
    """The enrollment, or an empty one (not enrolled) when there is none or it is unreadable."""
    return ProbeState.from_fields(read_state_fields(ensure_state_dir(state_dir)))


def save_state(state_dir: Path, state: ProbeState) -> None:
    """Write the enrollment, keeping what ``status`` records (last check-in, last error)."""
    update_state_fields(state_dir, state.to_json())


class Identity:
    """The key and the enrollment of one state directory, loaded together."""

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
        """Update the enrollment (always for the current key) and save it atomically."""
        self.state = dataclasses.replace(self.state, key_id=self.key_id, **changes)
        save_state(self.state_dir, self.state)
