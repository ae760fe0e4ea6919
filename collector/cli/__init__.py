"""``blockwatch-collector``: serve, migrate, and administer targets and probes.

The command line's entry (the console script is ``collector.cli:main``). The
commands live beside this module: ``serve`` (options derived from the settings
by ``options``), ``targets``, ``admin`` (probes, subscriptions) and ``report``
(events, status). Every ``serve`` option also reads ``BLOCKWATCH_<OPTION>``
(docs/architecture.md, "Public interfaces").
"""

from __future__ import annotations

import sys

import typer

from collector import __version__
from collector.cli import (
    admin,
    export,
    keys,
    maintenance,
    ooni,
    report,
    secrets,
    serve,
    targets,
)
from collector.cli.common import sessions
from collector.cli.options import DatabaseUrl, admin_settings

app = typer.Typer(
    name="blockwatch-collector",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("serve")(serve.command)
app.add_typer(targets.app, name="targets")
app.add_typer(admin.probes_app, name="probes")
app.add_typer(admin.subscriptions_app, name="subscriptions")
app.add_typer(secrets.app, name="secrets")
app.add_typer(ooni.app, name="ooni")
app.command("events")(report.events_command)
app.command("status")(report.status_command)
app.command("keygen")(keys.keygen_command)
app.command("prune")(maintenance.prune_command)
app.command("export")(export.export_command)
app.command("reanalyse")(maintenance.reanalyse_command)


@app.command("migrate")
def migrate_command(database_url: DatabaseUrl = None) -> None:
    """Apply the database migrations and exit."""
    with sessions(admin_settings(database_url)):
        typer.echo("migrated")


@app.command()
def version() -> None:
    """Print the collector's version."""
    typer.echo(f"blockwatch-collector {__version__}")


@app.callback()
def _root() -> None:
    """Verify, store and analyze Blockwatch probe measurements."""


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
