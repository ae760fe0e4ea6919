"""``blockwatch-collector export``: measurements, verdicts or events for researchers.

Streamed from the database a batch at a time (collector/services/exports.py):
constant memory whatever the number of rows. The public view by default
(k-anonymous, times rounded, a volunteer's signed bytes only when their probe
runs with --public-evidence); ``--full`` for the operator's own use.
"""

from __future__ import annotations

import contextlib
import sys
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from collector.cli.common import invalid, sessions
from collector.cli.options import DatabaseUrl, admin_settings
from collector.core.publication import FULL, Publication
from collector.services.exports import (
    WHAT,
    Filters,
    count,
    rows,
    write_csv,
    write_jsonl,
    write_parquet,
)


class What(StrEnum):
    MEASUREMENTS = "measurements"
    VERDICTS = "verdicts"
    EVENTS = "events"


class Format(StrEnum):
    JSONL = "jsonl"
    CSV = "csv"
    PARQUET = "parquet"


def _day(name: str, text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text).replace(tzinfo=UTC)
    except ValueError:
        raise invalid(f"{name} must be a date or time (2026-06-01, 2026-06-01T10:00)") from None


def export_command(
    what: Annotated[What, typer.Option("--what", help=" | ".join(WHAT))] = What.VERDICTS,
    output_format: Annotated[Format, typer.Option("--format")] = Format.JSONL,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="The file (stdout: jsonl and csv).")
    ] = None,
    domain: Annotated[str | None, typer.Option(help="Only this domain.")] = None,
    cc: Annotated[str | None, typer.Option(help="Only this country.")] = None,
    since: Annotated[str | None, typer.Option(help="From this time (UTC), inclusive.")] = None,
    until: Annotated[str | None, typer.Option(help="To this time (UTC), exclusive.")] = None,
    full: Annotated[
        bool, typer.Option("--full", help="Everything, not the public view (operators only).")
    ] = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Export measurements, verdicts or events as JSON lines, CSV or Parquet."""
    if output_format is Format.PARQUET and output is None:
        raise invalid("--format parquet needs --output FILE")
    filters = Filters(domain=domain.strip().lower() if domain else None,
                      cc=cc.upper() if cc else None,
                      since=_day("--since", since), until=_day("--until", until))  # fmt: skip
    settings = admin_settings(database_url)
    publication = FULL if full else Publication.public(settings)
    err = Console(stderr=True)
    with sessions(settings) as factory:
        total = count(factory, str(what), filters)
        columns = [*Progress.get_default_columns()[:1], BarColumn(), MofNCompleteColumn(),
                   TimeRemainingColumn()]  # fmt: skip
        with Progress(*columns, console=err, disable=not err.is_terminal) as progress:
            task = progress.add_task(f"{what}", total=total)

            def tick() -> None:
                progress.advance(task)

            items = rows(factory, str(what), filters, publication)
            try:
                if output_format is Format.PARQUET:
                    assert output is not None
                    written = write_parquet(str(output), str(what), items, tick)
                else:
                    target = (
                        output.open("w", encoding="utf-8", newline="")
                        if output
                        else contextlib.nullcontext(sys.stdout)
                    )
                    with target as out:
                        if output_format is Format.JSONL:
                            written = write_jsonl(out, items, tick)
                        else:
                            written = write_csv(out, str(what), items, tick)
            except RuntimeError as exc:
                raise invalid(str(exc)) from None
    view = "full" if full else "public"
    err.print(f"{written} {what} exported ({view} view)", highlight=False)
