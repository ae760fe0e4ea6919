"""``blockwatch-collector prune --retain DURATION``: delete old measurements, keep
every event's evidence (collector/services/retention.py; docs/operator-guide.md,
"Retention")."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from collector.cli.common import invalid, sessions
from collector.cli.options import DatabaseUrl, admin_settings
from collector.core.clock import SystemClock
from collector.services.retention import RetentionError, parse_retention, prune


def prune_command(
    retain: Annotated[
        str,
        typer.Option(
            "--retain",
            envvar="BLOCKWATCH_RETAIN",
            help="Keep measurements received within this long (180d, 26w, 72h; at least 1d).",
        ),
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would go; delete nothing.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Delete measurements older than --retain, except every event's evidence and the
    controls it was judged against."""
    try:
        retention = parse_retention(retain)
    except RetentionError as exc:
        raise invalid(str(exc)) from None
    with sessions(admin_settings(database_url)) as factory:
        report = prune(factory, retention, SystemClock().now(), dry_run=dry_run)
    summary = {
        "cutoff": report.cutoff.isoformat().replace("+00:00", "Z"),
        "deleted" if not dry_run else "would_delete": report.deleted,
        "kept_as_evidence": report.kept_as_evidence,
        "remaining": report.remaining,
    }
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        verb = "would delete" if dry_run else "deleted"
        typer.echo(
            f"{verb} {report.deleted} measurements received before {summary['cutoff']}; "
            f"kept {report.kept_as_evidence} older ones as event evidence; "
            f"{report.remaining} remain"
        )
