"""``blockwatch-collector events`` and ``status``: the API's views, for the terminal.

Read from the database through the event service (the same answers as
GET /api/v1/events and GET /api/v1/status/DOMAIN), as JSON or as tables.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from collector.cli.common import fail, sessions, short_time
from collector.cli.options import DatabaseUrl, admin_settings
from collector.core.db import session_scope
from collector.core.errors import CollectorError

STATE_COLOURS = {"ok": "green", "blocked": "red", "down": "yellow", "unknown": "dim"}


def events_command(
    domain: Annotated[str | None, typer.Option(help="Only this domain.")] = None,
    cc: Annotated[str | None, typer.Option(help="Only this country (CN).")] = None,
    state: Annotated[str | None, typer.Option(help="open or closed.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines, as the API.")] = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Block events, newest first (the API's GET /api/v1/events, for the terminal)."""
    from collector.core.publication import FULL  # noqa: PLC0415 (the operator sees all)
    from collector.services.events import EventService  # noqa: PLC0415

    try:
        with (
            sessions(admin_settings(database_url)) as factory,
            session_scope(factory) as session,
        ):
            events = EventService(FULL).events(
                session, domain=domain, cc=cc, state=state, limit=limit
            )
    except CollectorError as exc:
        raise fail(exc) from None
    if as_json:
        for event in events:
            typer.echo(json.dumps(event))
        return
    table = Table("id", "domain", "cc", "state", "scope", "methods", "ASNs", "started",
                  "detected", "ended", "probes", title=f"{len(events)} event(s)")  # fmt: skip
    for e in events:
        table.add_row(
            str(e["id"]),
            e["domain"],
            e["cc"],
            "[red]open[/]" if e["state"] == "open" else "closed",
            e["scope"],
            ",".join(e["methods"]),
            ",".join(f"AS{a}" for a in e["asns"]),
            short_time(e["started_at"]),
            short_time(e["detected_at"]),
            short_time(e["ended_at"]),
            str(e["probes"]),
        )
    Console().print(table)


def status_command(
    domain: str,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    database_url: DatabaseUrl = None,
) -> None:
    """A domain's state in each network, and its mirrors' (GET /api/v1/status/DOMAIN)."""
    from collector.core.publication import FULL  # noqa: PLC0415 (the operator sees all)
    from collector.services.events import EventService  # noqa: PLC0415

    try:
        with (
            sessions(admin_settings(database_url)) as factory,
            session_scope(factory) as session,
        ):
            status = EventService(FULL).status(session, domain)
    except CollectorError as exc:
        raise fail(exc) from None
    if as_json:
        typer.echo(json.dumps(status))
        return
    table = Table("domain", "cc", "ASN", "state", "methods", "since", "probes")
    for name, networks in [(status["domain"], status["networks"])] + [
        (m["domain"], m["networks"]) for m in status["mirrors"]
    ]:
        for n in networks or [{"cc": "-", "asn": 0, "state": "unknown", "methods": [],
                               "since": None, "probes": 0}]:  # fmt: skip
            colour = STATE_COLOURS.get(n["state"], "white")
            table.add_row(
                name,
                n["cc"],
                f"AS{n['asn']}",
                f"[{colour}]{n['state']}[/]",
                ",".join(n["methods"]),
                short_time(n["since"]),
                str(n["probes"]),
            )
    Console().print(table)
