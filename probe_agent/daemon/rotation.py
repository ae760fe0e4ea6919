"""Key rotation (``rotate-key``): a new key, agreed by the old one, installed only once accepted.

Where this sits in the data flow: beside ``identity``. The collector learns the
new key from a request signed by the old one and countersigned by the new one
(``client.rotate``, docs/api.md ``POST /probes/rotate``); from then on the old
key is retired (what it signed before stays valid, so the spool needs no
re-signing).

Files in the state directory, all mode 0600, written atomically:

1. ``key.pem.new``: the new key, written BEFORE asking the collector. An answer
   lost on the way back (a timeout after the collector committed) must not
   leave the probe with a retired key and no copy of the new one.
2. ``key.pem.old``: a copy of the current key, kept until the rotation succeeded.
3. Once the collector accepted: ``key.pem.new`` replaces ``key.pem`` (rename),
   ``state.json`` gets the new key id, ``key.pem.old`` is removed.

A clear refusal (the collector answered an error) removes ``key.pem.new`` and
``key.pem.old``; ``key.pem`` was never touched. No answer at all keeps both:
running ``rotate-key`` again resumes with the same new key, and if the
collector then says the old key is retired (or the new one is already known),
a check-in signed by the new key tells whether the earlier attempt went through.

Stop the daemon first: a daemon still holding the old key is refused after the
rotation until it is restarted.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from probe_agent.daemon.client import DEFAULT_TIMEOUT, CollectorClient
from probe_agent.protocol.errors import CollectorError, IdentityError
from probe_agent.state.identity import (
    KEY_FILE,
    _fsync_directory,
    _load_key,
    atomic_write,
    ensure_state_dir,
    key_id,
)
from probe_agent.state.status import update_state

NEW_KEY_FILE = KEY_FILE + ".new"
OLD_KEY_FILE = KEY_FILE + ".old"
# Answers to a resumed rotation that mean "maybe done already": the old key is
# retired, or the new key is known.
_MAYBE_DONE = {"err_revoked_key", "err_conflict"}

log = logging.getLogger("blockwatch.probe.keyrotation")


@dataclass(frozen=True, slots=True)
class Rotated:
    old_key_id: str
    new_key_id: str
    probe_id: str
    status: str
    resumed: bool  # a key.pem.new from an interrupted rotation was used


def _pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def _write(path: Path, key: Ed25519PrivateKey) -> None:
    try:
        atomic_write(path, _pem(key))
    except OSError as exc:
        raise IdentityError(f"cannot write {path}: {exc.strerror}") from exc


def _discard(directory: Path, *names: str) -> None:
    for name in names:
        (directory / name).unlink(missing_ok=True)
    _fsync_directory(directory)


def _new_key(directory: Path) -> tuple[Ed25519PrivateKey, bool]:
    """The key of an interrupted rotation, or a new one saved as ``key.pem.new``."""
    with contextlib.suppress(FileNotFoundError):
        return _load_key(directory / NEW_KEY_FILE), True
    key = Ed25519PrivateKey.generate()
    _write(directory / NEW_KEY_FILE, key)
    return key, False


async def _known_to_collector(
    collectors: tuple[str, ...], key: Ed25519PrivateKey, ca_file: str | None, timeout: float
) -> bool:
    """Whether a collector knows *key*: a check-in signed by it is not refused as unknown."""
    async with CollectorClient(collectors, key, timeout=timeout, ca_file=ca_file) as client:
        try:
            await client.checkin(None)
        except CollectorError as exc:
            if exc.code == "err_probe_pending":
                return True
            if exc.code in ("err_unknown_key", "err_revoked_key"):
                return False
            raise
    return True


async def rotate_key(
    state_dir: Path,
    collectors: tuple[str, ...],
    *,
    ca_file: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Rotated:
    """Rotate the probe's key with the first collector that answers.

    Raises ``IdentityError`` (no key, unsafe files), ``CollectorError`` (refused:
    nothing changed) or ``CollectorUnreachable`` (no answer: ``key.pem.new`` kept
    for the next attempt).
    """
    directory = ensure_state_dir(state_dir)
    try:
        old = _load_key(directory / KEY_FILE)
    except FileNotFoundError:
        raise IdentityError(f"no key to rotate in {directory}: run the probe first") from None
    new, resumed = _new_key(directory)
    if resumed:
        log.warning("resuming an interrupted key rotation with its new key")
    _write(directory / OLD_KEY_FILE, old)
    async with CollectorClient(collectors, old, timeout=timeout, ca_file=ca_file) as client:
        try:
            answer = await client.rotate(new)
        except CollectorError as exc:
            if not (
                resumed
                and exc.code in _MAYBE_DONE
                and await _known_to_collector(collectors, new, ca_file, timeout)
            ):
                _discard(directory, NEW_KEY_FILE, OLD_KEY_FILE)
                raise
            answer = {"probe_id": None, "status": None}  # done by the interrupted attempt
    os.replace(directory / NEW_KEY_FILE, directory / KEY_FILE)
    _fsync_directory(directory)
    changes = {"key_id": key_id(new)}
    for name in ("probe_id", "status"):
        if isinstance(answer.get(name), str):
            changes[name] = answer[name]
    update_state(directory, changes)
    _discard(directory, OLD_KEY_FILE)
    return Rotated(
        old_key_id=key_id(old),
        new_key_id=key_id(new),
        probe_id=str(answer.get("probe_id") or ""),
        status=str(answer.get("status") or ""),
        resumed=resumed,
    )
