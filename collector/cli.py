"""``blockwatch-collector``: the collector's command line.

The collector (signed ingestion, storage, analysis, alerts) is built on top of
the probe's engine in later stages; for now this entry point only reports its
version, so that packaging and the console script are in place and tested.
"""

from __future__ import annotations

import typer

from collector import __version__

app = typer.Typer(name="blockwatch-collector", no_args_is_help=True, add_completion=False)


@app.command()
def version() -> None:
    """Print the collector's version."""
    typer.echo(f"blockwatch-collector {__version__}")


@app.callback()
def _root() -> None:
    """Verify, store and analyse Blockwatch probe measurements."""


def main() -> None:
    app()
