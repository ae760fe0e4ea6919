"""Wiping the probe's state (``wipe``): the key, the spool and the state file, nothing else.

Where this sits in the data flow: at the end of a probe's life. A volunteer who
stops (or fears a seizure of the machine) removes what ties this machine to the
project: the private key, the measurements waiting in the spool, the
enrollment. Only the files the probe itself writes are removed, by name; the
directory goes too when nothing else is left in it. A directory holding
neither ``key.pem`` nor ``state.json`` is refused: a mistyped ``--state-dir``
must never empty someone's home directory.

Removal is ``unlink``: on journaling, copy-on-write and flash storage an
overwrite in place gives no guarantee, so none is pretended; full-disk
encryption is the volunteer guide's advice for that threat.
"""

from __future__ import annotations

from pathlib import Path

from probe_agent.state import identity, spool
from probe_agent.state.files import fsync_directory, is_temporary_of

# The names each owner says are its own (identity: key files and state.json; spool).
PROBE_FILES = identity.FILES + spool.FILES


def looks_like_state_dir(directory: Path) -> bool:
    """A directory (not a link to one) holding ``key.pem`` or ``state.json``."""
    if directory.is_symlink() or not directory.is_dir():
        return False
    return any((directory / name).is_file() for name in (identity.KEY_FILE, identity.STATE_FILE))


def wipe_state(directory: Path) -> tuple[list[str], list[str]]:
    """Remove the probe's files in *directory*: (names removed, names left in place).

    The directory itself is removed when nothing is left. The caller checks
    ``looks_like_state_dir`` first; this checks it again.
    """
    if not looks_like_state_dir(directory):
        raise ValueError(f"{directory} does not look like a probe state directory")
    temporary = sorted(p.name for p in directory.iterdir() if is_temporary_of(p.name, PROBE_FILES))
    names = list(PROBE_FILES) + temporary
    removed: list[str] = []
    for name in names:
        path = directory / name
        if path.is_symlink() or path.exists():
            path.unlink()
            removed.append(name)
    fsync_directory(directory)
    left = sorted(p.name for p in directory.iterdir())
    if not left:
        directory.rmdir()
    return removed, left
