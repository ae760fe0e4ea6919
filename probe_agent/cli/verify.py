"""``blockwatch-probe verify FILE|- [--collector-key FINGERPRINT|PATH]``: check an evidence bundle.

Where this sits: outside the measuring, for anyone holding a bundle
(``GET /api/v1/events/{id}/evidence``). It reads the bundle from a file or
standard input, anchors the collector's key to ``--collector-key`` (its
64-hex fingerprint, or a saved ``/.well-known/blockwatch.json``) and prints one
line per check (the collector key, the statement, each measurement) and a
summary; the checks themselves are ``probe_agent.protocol.evidence``, offline,
with nothing but this package. Exit 0 when everything is valid, 1 otherwise
(an unreadable file or fingerprint included). Without ``--collector-key`` the
bundle is checked for internal consistency only, and the summary says that the
collector key was not anchored. The lines are in the volunteer's language
(``probe_agent.i18n``); the exit status is the same in every language.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from probe_agent import i18n
from probe_agent.cli.options import env
from probe_agent.protocol.evidence import (
    BundleError,
    canonical_key_id,
    key_id_of_well_known,
    verify_bundle,
)
from probe_agent.protocol.messages import N_, Message, label

EXIT_INVALID = 1
MAX_BUNDLE_BYTES = 256 * 1024 * 1024  # 50 measurements of a few KiB each, with margin
HELP = N_("Verify an evidence bundle offline: signatures, key ids, the collector's statement.")


def _fail(message: Message) -> typer.Exit:
    line = label(i18n.gettext(N_("error:")), i18n.render(message), "bold red")
    Console(stderr=True).print(line, highlight=False)
    return typer.Exit(EXIT_INVALID)


def _read_json(source: str, what: Message) -> Any:
    try:
        if source == "-":
            text = sys.stdin.buffer.read(MAX_BUNDLE_BYTES + 1)
        else:
            with Path(source).open("rb") as file:
                text = file.read(MAX_BUNDLE_BYTES + 1)
    except OSError as exc:
        raise _fail(
            Message(
                N_("cannot read %(what)s %(source)s: %(reason)s"),
                what=what,
                source=source,
                reason=exc.strerror,
            )
        ) from None
    if len(text) > MAX_BUNDLE_BYTES:
        raise _fail(
            Message(
                N_("%(what)s %(source)s is larger than %(limit)s bytes"),
                what=what,
                source=source,
                limit=MAX_BUNDLE_BYTES,
            )
        )
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise _fail(
            Message(N_("%(what)s %(source)s is not JSON"), what=what, source=source)
        ) from None


def expected_key_id(anchor: str | None) -> str | None:
    """The collector key id to anchor to: a fingerprint as given, or a saved well-known's."""
    if anchor is None:
        return None
    key_id = canonical_key_id(anchor)
    if key_id is not None:
        return key_id
    if not Path(anchor).is_file():
        raise _fail(
            Message(
                N_(
                    "--collector-key %(anchor)r is neither a 64-hex fingerprint nor a saved "
                    "/.well-known/blockwatch.json"
                ),
                anchor=anchor,
            )
        )
    try:
        return key_id_of_well_known(_read_json(anchor, Message(N_("the collector's document"))))
    except BundleError as exc:
        reason = exc.args[0] if exc.args else ""
        raise _fail(
            Message(N_("--collector-key %(anchor)s: %(reason)s"), anchor=anchor, reason=reason)
        ) from None


def command(
    file: Annotated[str, typer.Argument(help=N_("The evidence bundle (JSON), or - for stdin."))],
    collector_key: Annotated[
        str | None,
        typer.Option(
            "--collector-key",
            help=N_(
                "The collector key's fingerprint (64 hex), or a saved "
                "/.well-known/blockwatch.json. Without it the key is not anchored."
            ),
            envvar=env("COLLECTOR_KEY"),
        ),
    ] = None,
) -> None:
    expected = expected_key_id(collector_key)
    result = verify_bundle(_read_json(file, Message(N_("the bundle"))), expected)
    for check in result.checks:
        typer.echo(check.line(i18n.gettext))
    typer.echo(result.summary(i18n.gettext))
    raise typer.Exit(0 if result.ok else EXIT_INVALID)
