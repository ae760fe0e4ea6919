"""``blockwatch-collector keygen [--out PATH]``: the collector's own Ed25519 key, made once.

Every replica signs evidence statements with this one key (collector/core/keys.py):
make it once, give each replica the file (``--key-file``), and publish the key id
it prints (``/.well-known/blockwatch.json`` serves it too). An existing file is
never replaced: bundles already handed out are checked against its fingerprint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from collector.cli.common import err, fail
from collector.core.keys import DEFAULT_KEY_FILE, KeyFileError, write_new_key


def keygen_command(
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help=f"Where to write the key (PEM, mode 0600). Default: $BLOCKWATCH_KEY_FILE, "
            f"else ./{DEFAULT_KEY_FILE}.",
            envvar="BLOCKWATCH_KEY_FILE",
        ),
    ] = None,
) -> None:
    """Write a new collector key (every replica shares it) and print its key id."""
    path = (out or Path(DEFAULT_KEY_FILE)).expanduser()
    try:
        key = write_new_key(path)
    except KeyFileError as exc:
        raise fail(exc) from None
    err.print(
        f"wrote {path} (mode 0600): give every replica this file (--key-file {path}); "
        "the key id below is what verifiers anchor bundles to",
        highlight=False,
    )
    typer.echo(key.key_id)
