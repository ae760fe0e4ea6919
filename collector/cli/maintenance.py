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


def reanalyse_command(
    since: Annotated[
        str | None, typer.Option(help="Only measurements from this day (YYYY-MM-DD) on.")
    ] = None,
    apply: Annotated[
        bool, typer.Option("--apply", help="Write the new verdicts (else report only).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Judge the stored measurements again with the current rules; report what would
    change, or (--apply) write it, resumably, and replay the touched keys' history."""
    from collections import Counter  # noqa: PLC0415
    from datetime import UTC, datetime  # noqa: PLC0415

    from rich.console import Console  # noqa: PLC0415
    from rich.progress import Progress  # noqa: PLC0415

    from collector.detection.reanalysis import Reanalysis  # noqa: PLC0415
    from collector.services.geo import make_geolocator  # noqa: PLC0415

    start = None
    if since is not None:
        try:
            start = datetime.fromisoformat(since).replace(tzinfo=UTC)
        except ValueError:
            raise invalid(f"--since must be YYYY-MM-DD: {since!r}") from None
    settings = admin_settings(database_url)
    geolocator = make_geolocator(settings.geoip_country_db, settings.geoip_asn_db)
    err = Console(stderr=True)
    with sessions(settings) as factory, Progress(console=err, disable=not err.is_terminal) as bar:
        task = bar.add_task("measurements", total=None)
        stats = Reanalysis(settings, geolocator).run(
            factory, start, apply, lambda n: bar.advance(task, n)
        )
    summary = stats.to_json()
    if as_json:
        typer.echo(json.dumps(summary))
        return
    verb = "changed" if apply else "would change"
    typer.echo(
        f"{stats.judged} judged again: {stats.changed} {verb} (now blocked {stats.now_blocked}, "
        f"no longer blocked {stats.no_longer_blocked}), {stats.reasons_changed} with other "
        f"reasons, {stats.unchanged} unchanged; {len(stats.keys)} (domain, country) touched"
        + (f"; {stats.written} written" if apply else "")
    )
    for change, n in stats.by_change.most_common(10):
        typer.echo(f"  {n:>8}  {change}")
    kinds = Counter(event.kind for event in stats.events)
    verb = "" if apply else "would "
    typer.echo(
        f"events: {kinds['open']} {verb}open, {kinds['close']} {verb}close, "
        f"{kinds['change']} {verb}change"
    )
    for event in stats.events[:20]:
        typer.echo(f"  {event.kind:<6}  {event.domain} {event.cc}  {event.describe()}")
    if len(stats.events) > 20:
        typer.echo(f"  ... and {len(stats.events) - 20} more (--json lists them all)")
    if stats.history is not None:
        h = stats.history
        typer.echo(
            f"history: {h.opened} events stored from history ({h.ended} ended, alerting "
            f"nobody; {h.ongoing} going on, handed to the detector; {h.merged} merged into "
            f"a live event)"
        )
