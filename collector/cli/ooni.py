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
from collections.abc import Iterable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from collector.cli.common import invalid, sessions
from collector.cli.options import DatabaseUrl, admin_settings
from collector.core.clock import SystemClock
from collector.core.db import session_scope
from collector.detection.history import replay
from collector.services.ooni import (
    OONI_API,
    FetchError,
    Importer,
    Item,
    Query,
    fetch,
    read_files,
    read_stream,
)

app = typer.Typer(no_args_is_help=True, help="OONI's measurements: a second source.")


class Format(StrEnum):
    TABLE = "table"
    JSONL = "jsonl"


# The options import and fetch share (same names, same meaning).
DryRunOption = Annotated[bool, typer.Option("--dry-run", help="Judge and report; store nothing.")]
FormatOption = Annotated[
    Format, typer.Option("--format", help="table (a summary) or jsonl (a line each).")
]
AddTargetsOption = Annotated[
    bool,
    typer.Option(
        "--add-targets", help="Store measurements of domains that are not targets, as targets."
    ),
]


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
    dry_run: DryRunOption = False,
    output: FormatOption = Format.TABLE,
    add_targets: AddTargetsOption = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Judge OONI web_connectivity measurements by Blockwatch's rules, and store them."""
    missing = [f for f in files if f != "-" and not Path(f).is_file()]
    if missing:
        raise invalid(f"no such file: {', '.join(missing)}")
    _import(_items(files), dry_run, output, add_targets, database_url)


def _import(
    items: Iterable[Item], dry_run: bool, output: Format, add_targets: bool,
    database_url: str | None,
) -> None:  # fmt: skip
    """Judge, store (unless dry), report; exit 1 when some measurement was unreadable."""
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
        stats = importer.run(factory, items, report)
        with session_scope(
            factory
        ) as session:  # what history shows (collector/detection/history.py)
            history = replay(session, stats.keys, settings, SystemClock().now())
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
    if history.opened:
        err.print(
            f"history: {history.opened} events opened from the imported measurements, "
            f"{history.ended} of them ended (no alert), {history.ongoing} still going on "
            f"(alerted once, marked history), {history.merged} the start of a live event",
            highlight=False,
        )
    raise typer.Exit(1 if stats.errors else 0)


@app.command("fetch")
def fetch_command(
    domain: Annotated[str, typer.Option(help="The domain OONI measured (its input's host).")],
    cc: Annotated[str, typer.Option(help="The country (probe_cc), two letters.")],
    since: Annotated[str, typer.Option(help="From this day (YYYY-MM-DD), exclusive.")],
    until: Annotated[str | None, typer.Option(help="To this day (YYYY-MM-DD).")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100000, help="Measurements at most.")] = 1000,
    api: Annotated[str, typer.Option(help="OONI's API.", envvar="BLOCKWATCH_OONI_API")] = OONI_API,
    save: Annotated[
        Path | None, typer.Option(help="Also write the measurements, one JSON a line.")
    ] = None,
    dry_run: DryRunOption = False,
    output: FormatOption = Format.TABLE,
    add_targets: AddTargetsOption = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Fetch OONI's measurements of a domain in a country from its public API, then import."""
    import asyncio  # noqa: PLC0415
    import re  # noqa: PLC0415

    for name, day in (("--since", since), ("--until", until)):
        if day is not None and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", day):
            raise invalid(f"{name} must be YYYY-MM-DD: {day!r}")
    if not re.fullmatch(r"[A-Za-z]{2}", cc):
        raise invalid(f"--cc must be two letters: {cc!r}")
    if not api.startswith(("https://", "http://")):
        raise invalid(f"--api must be an http(s) URL: {api!r}")
    query = Query(domain=domain.strip().lower(), cc=cc.upper(), since=since, until=until,
                  limit=limit)  # fmt: skip
    try:
        items = asyncio.run(fetch(api, query))
    except FetchError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None
    if save is not None:
        save.write_bytes(b"".join(item.raw + b"\n" for item in items))
    _import(items, dry_run, output, add_targets, database_url)
