"""``blockwatch-collector ooni import``: OONI's measurements as a second source.

Reads OONI web_connectivity measurements (collector/services/ooni.py: JSON,
JSON lines, gzip, ``-`` for standard input), judges each by Blockwatch's rules
and stores it as source ``ooni`` (docs/methodology.md, "OONI measurements";
DESIGN, "OONI and exports"). ``--dry-run`` stores nothing; ``--format jsonl``
prints one line per measurement read, our verdict beside OONI's ``blocking``.
Exit status 0 when every measurement was read, 1 when some could not be (the
others are stored all the same), 2 for an invalid command line.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from collector.cli.common import invalid, sessions
from collector.cli.options import DatabaseUrl, admin_settings
from collector.core.clock import SystemClock
from collector.services.ooni import Importer, Item, read_files, read_stream

app = typer.Typer(no_args_is_help=True, help="OONI's measurements: a second source.")


class Format(StrEnum):
    TABLE = "table"
    JSONL = "jsonl"


def _items(files: list[str]) -> Iterator[Item]:
    for name in files:
        if name == "-":
            yield from read_stream("-", sys.stdin.buffer)
        else:
            yield from read_files([Path(name)])


@app.command("import")
def import_command(
    files: Annotated[
        list[str], typer.Argument(help="OONI measurement files (JSON, JSONL, .gz); - for stdin.")
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Judge and report; store nothing.")
    ] = False,
    output: Annotated[
        Format, typer.Option("--format", help="table (a summary) or jsonl (a line each).")
    ] = Format.TABLE,
    add_targets: Annotated[
        bool,
        typer.Option(
            "--add-targets", help="Store measurements of domains that are not targets, as targets."
        ),
    ] = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Judge OONI web_connectivity measurements by Blockwatch's rules, and store them."""
    missing = [f for f in files if f != "-" and not Path(f).is_file()]
    if missing:
        raise invalid(f"no such file: {', '.join(missing)}")
    settings = admin_settings(database_url)
    summary: Counter[tuple[str, str, str, str]] = Counter()
    errors: list[dict[str, Any]] = []

    def report(line: dict[str, Any]) -> None:
        if output is Format.JSONL:
            typer.echo(json.dumps(line, ensure_ascii=False))
        if "error" in line:
            errors.append(line)
            return
        ours = ",".join(line["verdict"]["flags"])
        theirs = str(line["ooni"]["blocking"]).lower()
        summary[(line["domain"], line["probe_cc"], ours, theirs)] += 1

    importer = Importer(settings, SystemClock(), dry_run=dry_run, add_targets=add_targets)
    with sessions(settings) as factory:
        stats = importer.run(factory, _items(files), report)
    err = Console(stderr=True)
    for line in errors[:20]:
        err.print(f"[yellow]{line['file']}:{line['line']}[/]: {line['error']}", highlight=False)
    if len(errors) > 20:
        err.print(f"... and {len(errors) - 20} more unreadable", highlight=False)
    if output is Format.TABLE:
        table = Table("domain", "country", "Blockwatch", "OONI blocking", "measurements")
        for (domain, cc, ours, theirs), count in sorted(summary.items()):
            table.add_row(domain, cc, ours, theirs, str(count))
        Console().print(table)
    verb = "would store" if dry_run else "stored"
    err.print(
        f"{stats.read} read: {verb} {stats.stored}, {stats.duplicates} already stored, "
        f"{stats.not_targets} of domains that are not targets (--add-targets stores them), "
        f"{stats.errors} unreadable; {stats.blocked} blocked by Blockwatch's rules",
        highlight=False,
    )
    raise typer.Exit(1 if stats.errors else 0)
