"""The state directory's file plumbing: modes, atomic writes, bounded private reads.

Where this sits in the data flow: under every module of ``probe_agent.state``.
Each file in ``--state-dir`` has one owner (``identity``: the key files;
``statefile``: ``state.json``; ``spool``: ``spool.db``), and the owners write
and read through these helpers, so that the guarantees hold for all of them:

- the directory is created mode 0700 and refused when group or others can
  write to it (whoever can write there can replace ``key.pem``);
- a file is written atomically (a temporary file opened 0600 from creation,
  fsync, rename, fsync of the directory): a crash leaves the old file or the
  new one, never half of one, and the bytes are never readable by others even
  for an instant;
- a private file that group or others can access is refused, not silently
  fixed: someone may already have copied it (ssh refuses such keys too).

Failures of the directory and of a private file raise ``IdentityError``;
``OSError`` from writing is the owner's to translate.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
from pathlib import Path

from probe_agent.protocol.errors import IdentityError
from probe_agent.protocol.messages import N_

DIR_MODE = 0o700
FILE_MODE = 0o600
# The temporary files of ``atomic_write``: ".<name>.<12 hex>.tmp".
_TEMPORARY = re.compile(r"^\.(.+)\.[0-9a-f]{12}\.tmp$")
# Errnos of file systems without hard links (some FUSE and network mounts, vfat).
_NO_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK}


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
        raise IdentityError(
            N_("cannot create the state directory %(directory)s: %(reason)s"),
            directory=directory,
            reason=str(exc),
        ) from exc
    if not stat.S_ISDIR(st.st_mode):
        raise IdentityError(
            N_("the state directory %(directory)s is not a directory"), directory=directory
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        # Whoever can write here can replace key.pem with a key of their own.
        raise IdentityError(
            N_(
                "refusing the state directory %(directory)s: group or others can write to it "
                "(mode %(mode)s); run: chmod 700 %(directory)s"
            ),
            directory=directory,
            mode=f"{stat.S_IMODE(st.st_mode):04o}",
        )
    return directory


def fsync_directory(directory: Path) -> None:
    """Make the directory's entries durable (a rename or an unlink survives a power cut)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_temporary_of(name: str, targets: tuple[str, ...]) -> bool:
    """Whether *name* is a temporary file of ``atomic_write`` for one of *targets*.

    A crash between creating and renaming one leaves it behind: ``wipe`` removes it.
    """
    match = _TEMPORARY.match(name)
    return match is not None and match.group(1) in targets


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
    fsync_directory(path.parent)


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
    fsync_directory(path.parent)
    return True


def read_regular(path: Path, what: str, *, private: bool, limit: int) -> bytes:
    """At most *limit* bytes of a regular file; a *private* one must be its owner's only.

    Follows a symlink: Kubernetes mounts secrets as links into a ``..data`` directory.
    Raises ``FileNotFoundError`` when it is missing, ``OSError`` when it cannot be
    read, ``IdentityError`` when it is not a regular file or not private enough.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as file:
        st = os.fstat(file.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise IdentityError(
                N_("the %(what)s %(path)s is not a regular file"), what=what, path=path
            )
        if private and st.st_mode & 0o077:
            raise IdentityError(
                N_(
                    "refusing to use the %(what)s %(path)s: group or others can access it "
                    "(mode %(mode)s); run: chmod 600 %(path)s"
                ),
                what=what,
                path=path,
                mode=f"{stat.S_IMODE(st.st_mode):04o}",
            )
        return file.read(limit)


def remove(directory: Path, *names: str) -> None:
    """Remove *names* from *directory* (missing ones are fine), durably."""
    for name in names:
        (directory / name).unlink(missing_ok=True)
    fsync_directory(directory)
