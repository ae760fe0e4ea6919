"""Secrets at rest: what the collector must read back in clear, sealed with Fernet.

Where it sits: a subscription's signing secret (``whsec_...``) and its channel
settings (Slack or Discord webhook URLs, Matrix and Mastodon access tokens, ntfy
topics) are needed in clear to send an alert, so they cannot be hashed like the
management token. ``collector.services.subscriptions`` seals them on every
write and opens them for the API's one-time display; ``collector.alerts.outbox``
opens them to send. Nothing else reads them.

A sealed value is ``bws1:<key id>:<Fernet token>``: recognisable, so that clear
values left by an older version are sealed at startup, and the key id (the
first 8 hex digits of the key's SHA-256) tells ``secrets status`` and an error
which key sealed it without showing any key.

The keys, in this order (docs/operator-guide.md, "Secrets at rest"):

1. ``BLOCKWATCH_SECRET_KEY``: Fernet keys, comma-separated; the first seals,
   all open (``MultiFernet``), so a key is rotated by putting a new one first
   and running ``blockwatch-collector secrets rotate``.
2. Else, with a SQLite database (a lone instance, whatever the mode), the key
   file ``blockwatch-secret.key`` beside the database (0600, one key a line, the
   first seals), created on first use like an SSH host key and like the
   collector key (collector/core/keys.py): never in the database, so a copy of
   the database alone (a backup, a dump shared to debug) opens nothing. It is
   created atomically (of two processes starting at once, one key wins) and
   refused, not fixed, when group or others can read it.
3. Else (PostgreSQL): no key. In production the settings refuse to start; in
   the lab and demo modes whatever must seal or open a secret fails with
   ``err_no_secret_key``. Never a key made for one process: the administration
   commands run in the lab mode, and a value one of them sealed with its own
   key would be lost to every other process.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import stat
from functools import lru_cache
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy.engine import make_url

from collector.core.errors import CollectorError
from collector.core.settings import CollectorSettings

PREFIX = "bws1:"
KEY_FILE_NAME = "blockwatch-secret.key"
VARIABLE = "BLOCKWATCH_SECRET_KEY"
KEYGEN = "blockwatch-collector secrets keygen"
MAX_KEY_FILE_BYTES = 64 * 1024  # a key is 45 bytes a line

log = logging.getLogger("blockwatch.collector.secrets")


class SecretKeyError(CollectorError):
    """No key, a malformed key, or a sealed value none of the keys opens.

    Codes: ``err_no_secret_key``, ``err_bad_secret_key``, ``err_unknown_secret_key``.
    Messages name key ids and files, never a key or a secret.
    """

    status = 503
    code = "err_no_secret_key"


def generate_key() -> str:
    """A new Fernet key (44 characters of url-safe base64)."""
    return Fernet.generate_key().decode()


def key_id(key: str) -> str:
    return hashlib.sha256(base64.urlsafe_b64decode(key)).hexdigest()[:8]


def is_sealed(value: str | None) -> bool:
    return value is not None and value.startswith(PREFIX)


def sealed_key_id(value: str) -> str | None:
    """The id of the key that sealed *value*; None for a clear value."""
    if not is_sealed(value):
        return None
    return value[len(PREFIX) :].partition(":")[0]


class Keyring:
    """The keys, the first one sealing; *source* says where they came from (never a key)."""

    def __init__(self, keys: tuple[str, ...], source: str) -> None:
        self.ids = tuple(key_id(k) for k in keys)
        self.source = source
        self._fernet = MultiFernet([Fernet(k) for k in keys])

    def __repr__(self) -> str:
        return f"Keyring(ids={self.ids!r}, source={self.source!r})"

    def seal(self, clear: str) -> str:
        token = self._fernet.encrypt(clear.encode()).decode()
        return f"{PREFIX}{self.ids[0]}:{token}"

    def open(self, value: str) -> str:
        """The clear text of *value*; a clear value (not yet sealed) as it is."""
        if not is_sealed(value):
            return value
        try:
            return self._fernet.decrypt(self._token(value)).decode()
        except (InvalidToken, UnicodeDecodeError):
            raise self._unknown(value) from None

    def reseal(self, value: str) -> str:
        """*value* sealed with the first key (clear or sealed with another one)."""
        if not is_sealed(value):
            return self.seal(value)
        if sealed_key_id(value) == self.ids[0]:
            return value
        try:
            token = self._fernet.rotate(self._token(value)).decode()
        except InvalidToken:
            raise self._unknown(value) from None
        return f"{PREFIX}{self.ids[0]}:{token}"

    @staticmethod
    def _token(value: str) -> bytes:
        return value[len(PREFIX) :].partition(":")[2].encode()

    def _unknown(self, value: str) -> SecretKeyError:
        return SecretKeyError(
            f"a stored secret is sealed with key {sealed_key_id(value)}, which none of the "
            f"collector's keys ({self.source}: {', '.join(self.ids)}) opens: give "
            f"{VARIABLE} every key still in use, the sealing one first",
            "err_unknown_secret_key",
        )


class Sealer:
    """Seals and opens with the settings' keys, found on first use (see the module)."""

    def __init__(self, settings: CollectorSettings) -> None:
        self.settings = settings

    def keyring(self) -> Keyring:
        path = key_file(self.settings)
        return _keyring(self.settings.secret_key.get_secret_value(), str(path) if path else None)

    def seal(self, clear: str) -> str:
        return self.keyring().seal(clear)

    def open(self, value: str) -> str:
        # A clear value (an older version's, sealed at the next start) needs no key.
        return self.keyring().open(value) if is_sealed(value) else value

    def open_optional(self, value: str | None) -> str | None:
        return None if value is None else self.open(value)


def key_file(settings: CollectorSettings) -> Path | None:
    """``blockwatch-secret.key`` beside a SQLite database file; None otherwise."""
    if not settings.is_sqlite:
        return None
    database = make_url(settings.database_url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).expanduser().resolve().parent / KEY_FILE_NAME


def missing_key_message() -> str:
    return (
        f"refusing to start: with PostgreSQL, set {VARIABLE} (`{KEYGEN}` makes one), the same "
        "on every replica: it seals the subscriptions' secrets at rest (docs/operator-guide.md, "
        "'Secrets at rest')"
    )


@lru_cache(maxsize=32)
def _keyring(given: str, path: str | None) -> Keyring:
    # Cached per process: the file is read once, not on every request. A failure is
    # not cached: the next use tries again (the operator may have fixed it).
    if given.strip():
        return Keyring(_parse(given.split(","), VARIABLE), VARIABLE)
    if path is None:
        raise SecretKeyError(missing_key_message())
    file = Path(path)
    if not file.exists():
        _create(file)
    return Keyring(_parse(_read_private(file).split(), str(file)), str(file))


def _parse(items: list[str], source: str) -> tuple[str, ...]:
    keys = tuple(item.strip() for item in items if item.strip())
    if not keys:
        raise SecretKeyError(f"{source} holds no key", "err_bad_secret_key")
    for number, key in enumerate(keys, 1):
        try:
            Fernet(key)
        except (ValueError, binascii.Error):
            raise SecretKeyError(
                f"{source}: key {number} of {len(keys)} is not a Fernet key (44 characters of "
                f"url-safe base64; `{KEYGEN}` makes one)",
                "err_bad_secret_key",
            ) from None
    return keys


def _read_private(file: Path) -> str:
    try:
        descriptor = os.open(file, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise SecretKeyError(f"cannot read {file}: {exc.strerror}", "err_bad_secret_key") from exc
    with os.fdopen(descriptor, "rb") as handle:
        status = os.fstat(handle.fileno())
        if not stat.S_ISREG(status.st_mode):
            raise SecretKeyError(f"{file} is not a regular file", "err_bad_secret_key")
        if status.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SecretKeyError(
                f"refusing {file}: group or others can access it (mode "
                f"{stat.S_IMODE(status.st_mode):04o}); someone may have copied it. If not, run: "
                f"chmod 600 {file}",
                "err_bad_secret_key",
            )
        return handle.read(MAX_KEY_FILE_BYTES).decode("ascii", errors="replace")


def _create(file: Path) -> None:
    """Write a new key to *file*, unless another process wrote one first (it wins)."""
    temporary = file.with_name(f".{file.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(generate_key() + "\n")
            out.flush()
            os.fsync(out.fileno())
        # link() never replaces: of two processes creating at once, the second one
        # fails here and reads the first one's key, whole (written before the link).
        os.link(temporary, file)
        log.info("created %s, the key sealing secrets at rest: keep a copy apart from the "
                 "database's backups", file)  # fmt: skip
    except FileExistsError:
        pass
    except OSError as exc:
        raise SecretKeyError(f"cannot write {file}: {exc.strerror}", "err_bad_secret_key") from exc
    finally:
        temporary.unlink(missing_ok=True)
