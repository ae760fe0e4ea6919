"""The collector's own Ed25519 key: what signs its evidence statements.

Where this sits in the data flow: at the end. A probe signs each measurement
with its own key; the collector adds what that signature does not cover (the
network it attributed the measurement to, the event it is evidence of) in a
statement signed with this key (collector.services.evidence). Anyone checks the
key against its fingerprint, published at ``/.well-known/blockwatch.json``.

Every replica must sign with one key, or a statement from one would not verify
against the fingerprint another publishes: the key lives in a file
(``--key-file``, made once by ``blockwatch-collector keygen``) that the
operator gives every replica. Which key a process uses (``collector_key``):

- ``--key-file`` given: that file; when it is missing, a lone instance (SQLite,
  or the lab and demo modes) creates it, a PostgreSQL deployment in production
  refuses to start (each replica would make its own);
- no ``--key-file`` and SQLite: ``collector-key.pem`` beside the database file,
  created on first start;
- no ``--key-file`` and PostgreSQL: refused in production (the settings say so
  before anything starts); in the lab and demo modes a key made for this
  process only, as with an in-memory SQLite database (nothing to keep it beside).

The file is PKCS#8 PEM, mode 0600, created atomically (a temporary file linked
into place: of two workers starting at once, one key wins and both use it), and
refused, not fixed, when group or others can read it (someone may have copied it).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)
from sqlalchemy.engine import make_url

from collector.core.errors import CollectorError
from collector.core.settings import CollectorSettings, Mode

DEFAULT_KEY_FILE = "collector-key.pem"
KEY_FILE_MODE = 0o600
MAX_KEY_BYTES = 64 * 1024  # a PEM key is ~120 bytes

log = logging.getLogger("blockwatch.collector.keys")


class KeyFileError(CollectorError):
    """The key file is missing where it may not be created, unreadable, unsafe or not a key."""

    status = 400  # the operator's to fix (the CLI exits 2), never an HTTP answer
    code = "err_key_file"


@dataclass(frozen=True)
class CollectorKey:
    """The collector's signing key and its public half, raw (32 bytes) and fingerprinted."""

    private: Ed25519PrivateKey

    @property
    def public_key(self) -> bytes:
        return self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def key_id(self) -> str:
        """SHA-256 of the raw public key, lower-case hex (as a probe's key id)."""
        return hashlib.sha256(self.public_key).hexdigest()

    def sign(self, prefix: bytes, message: bytes) -> bytes:
        """The signature of *prefix* + *message* (the prefix names what is signed)."""
        return self.private.sign(prefix + message)

    @classmethod
    def generate(cls) -> CollectorKey:
        return cls(Ed25519PrivateKey.generate())


def pem(key: CollectorKey) -> bytes:
    return key.private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def default_key_file(settings: CollectorSettings) -> Path | None:
    """``collector-key.pem`` beside a SQLite database file; None for any other database."""
    if not settings.is_sqlite:
        return None
    database = make_url(settings.database_url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).expanduser().parent / DEFAULT_KEY_FILE


def may_create(settings: CollectorSettings) -> bool:
    """A lone instance may make its own key: SQLite (one host), or the lab and demo modes."""
    return settings.is_sqlite or settings.mode is not Mode.PRODUCTION


def collector_key(settings: CollectorSettings) -> CollectorKey:
    """The key this process signs with (the module's docstring says which)."""
    path = settings.key_file or default_key_file(settings)
    if path is None:
        if not may_create(settings):
            raise KeyFileError(missing_key_message(None))
        log.warning("no --key-file: a key for this process only (lab or demo mode)")
        return CollectorKey.generate()
    path = path.expanduser()
    if path.exists() or not may_create(settings):
        return load_key(path)
    key = create_key(path)
    log.info("created the collector key %s (key id %s)", path, key.key_id)
    return key


def missing_key_message(path: Path | None) -> str:
    where = f" {path}" if path is not None else " PATH"
    return (
        "refusing to start: with PostgreSQL every replica must sign with one key; run "
        f"`blockwatch-collector keygen --out{where}` once and give every replica that file "
        "(--key-file or BLOCKWATCH_KEY_FILE)"
    )


def load_key(path: Path) -> CollectorKey:
    """The key in *path*; ``KeyFileError`` when missing, readable by others or not Ed25519."""
    data = _read_private(path)
    try:
        key = load_pem_private_key(data, password=None)
    except TypeError as exc:  # an encrypted PEM and no password
        raise KeyFileError(f"the key file {path} is encrypted: not supported") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"the key file {path} is not a PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"the key file {path} does not hold an Ed25519 key")
    return CollectorKey(key)


def create_key(path: Path) -> CollectorKey:
    """A new key written to *path* (0600); the key already there if another process won."""
    key = CollectorKey.generate()
    try:
        if not _link_new(path, pem(key)):
            return load_key(path)  # a worker started at the same time made it first
    except OSError as exc:
        raise KeyFileError(f"cannot write the key file {path}: {exc.strerror}") from exc
    return key


def write_new_key(path: Path) -> CollectorKey:
    """``keygen``: a new key in *path*, which must not exist yet (a key is never replaced)."""
    key = CollectorKey.generate()
    try:
        created = _link_new(path, pem(key))
    except OSError as exc:
        raise KeyFileError(f"cannot write the key file {path}: {exc.strerror}") from exc
    if not created:
        raise KeyFileError(
            f"{path} exists: a collector key is never replaced (its fingerprint is published); "
            "remove it first if you really mean to",
            "err_key_file_exists",
        )
    return key


def _read_private(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise KeyFileError(missing_key_message(path), "err_key_file_missing") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read the key file {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as file:
        st = os.fstat(file.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"the key file {path} is not a regular file")
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(
                f"refusing the key file {path}: group or others can access it "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); someone may have copied it. "
                f"If not, run: chmod 600 {path}"
            )
        return file.read(MAX_KEY_BYTES)


def _link_new(path: Path, data: bytes) -> bool:
    """Write *data* to a new file *path* (0600, durable); False when *path* already exists.

    The bytes go to a temporary file first, then ``link`` puts it in place, which fails
    when the name exists: nobody ever reads half a key, and no key is overwritten.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
