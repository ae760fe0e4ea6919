"""``blockwatch-collector secrets keygen|status|rotate``: the key sealing secrets at rest.

Subscriptions' signing secrets and channel settings are stored sealed
(collector/core/secrets.py) with the key(s) of ``BLOCKWATCH_SECRET_KEY``, else
the key file beside a SQLite database. ``keygen`` prints a new key; ``status``
counts the stored values each key sealed (no value, no key shown); ``rotate``
re-seals every value with the first key, so that the others can be retired
(docs/operator-guide.md, "Secrets at rest").
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from collector.cli.common import err, fail, sessions
from collector.cli.options import DatabaseUrl, admin_settings
from collector.core.clock import SystemClock
from collector.core.db import session_scope
from collector.core.secrets import Sealer, SecretKeyError, generate_key
from collector.services.subscriptions import SEALED_COLUMNS, seal_stored, sealing_status

app = typer.Typer(no_args_is_help=True, help="The key sealing secrets at rest.")


@app.command("keygen")
def keygen() -> None:
    """Print a new key for BLOCKWATCH_SECRET_KEY (or a line of the key file)."""
    typer.echo(generate_key())


@app.command("status")
def status(
    as_json: Annotated[bool, typer.Option("--json")] = False, database_url: DatabaseUrl = None
) -> None:
    """How many stored values each key sealed, and how many are still clear (exit 1 when a
    value is clear or sealed with a key the collector lacks)."""
    settings = admin_settings(database_url)
    with sessions(settings) as factory, session_scope(factory) as session:
        report = sealing_status(session, Sealer(settings))
    if as_json:
        typer.echo(json.dumps(report))
    else:
        _print(report)
    unknown = any(k["role"] == "unknown" for k in report["keys"])
    if unknown or any(report["clear"].values()) or report["error"]:
        raise typer.Exit(1)


def _print(report: dict[str, Any]) -> None:
    if report["error"]:
        err.print(f"[bold red]error:[/] {report['error']}", highlight=False)
    else:
        typer.echo(f"keys from {report['source']}")
    table = Table("key id", "role", *SEALED_COLUMNS)
    for key in report["keys"]:
        table.add_row(key["id"], key["role"], *(str(key[c]) for c in SEALED_COLUMNS))
    table.add_row("-", "clear", *(str(report["clear"][c]) for c in SEALED_COLUMNS))
    Console().print(table)


@app.command("rotate")
def rotate(database_url: DatabaseUrl = None) -> None:
    """Re-seal every stored value with the first key of BLOCKWATCH_SECRET_KEY (safe while
    collectors run, if they hold every key). Exit 1 when some value no key opens."""
    settings = admin_settings(database_url)
    sealer = Sealer(settings)
    try:
        with sessions(settings) as factory:
            done = seal_stored(factory, sealer, SystemClock().now(), reseal=True)
            sealing = sealer.keyring().ids[0]
    except SecretKeyError as exc:
        raise fail(exc) from None
    typer.echo(f"{done.written} values written; the sealing key is {sealing}")
    if done.unopened:
        err.print(
            f"[bold red]error:[/] {done.unopened} values are sealed with a key "
            "BLOCKWATCH_SECRET_KEY lacks (left as they are): `secrets status` names it",
            highlight=False,
        )
        raise typer.Exit(1)
