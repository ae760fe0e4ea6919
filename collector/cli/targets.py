"""``blockwatch-collector targets``: the instance domains probes measure.

Lists come from the operator (domains, a file, an http(s) URL) or ship with the
collector (``--builtin NAME``, read from collector/data with importlib.resources);
either way they go through the importers' parser and the target service, as the
API's do.
"""

from __future__ import annotations

import asyncio
import json
from importlib import resources
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from collector.cli.common import err, fail, invalid, sessions
from collector.cli.options import DatabaseUrl, admin_settings
from collector.core.db import session_scope
from collector.core.errors import CollectorError
from collector.services.targets import TargetService

if TYPE_CHECKING:
    from collector.services.importers import ImportResult

app = typer.Typer(no_args_is_help=True, help="The instance domains probes measure.")
# --builtin NAME -> the file in collector/data (collector/data/README.md says where it comes from).
BUILTIN_LISTS = {"fediverse-zh": "targets-fediverse-zh.csv"}


@app.command("add")
def targets_add(
    domains: list[str],
    group: Annotated[str | None, typer.Option(help="The instance group.")] = None,
    kind: Annotated[str, typer.Option(help="primary, mirror or alias.")] = "primary",
    database_url: DatabaseUrl = None,
) -> None:
    """Add DOMAIN... (to a group: an instance with its mirrors and aliases)."""
    try:
        with (
            sessions(admin_settings(database_url)) as factory,
            session_scope(factory) as session,
        ):
            rows = TargetService().add(session, domains, group=group, kind=kind, source="cli")
            typer.echo(f"{len(rows)} target(s) added")
    except CollectorError as exc:
        raise fail(exc) from None


@app.command("remove")
def targets_remove(domain: str, database_url: DatabaseUrl = None) -> None:
    """Remove DOMAIN."""
    try:
        with (
            sessions(admin_settings(database_url)) as factory,
            session_scope(factory) as session,
        ):
            TargetService().remove(session, domain)
    except CollectorError as exc:
        raise fail(exc) from None


@app.command("import")
def targets_import(
    source: Annotated[str | None, typer.Argument(help="A file or an http(s) URL.")] = None,
    builtin: Annotated[
        str | None,
        typer.Option(help=f"A list shipped with the collector: {', '.join(BUILTIN_LISTS)}."),
    ] = None,
    language: Annotated[str | None, typer.Option(help="Keep only this language, e.g. zh.")] = None,
    group: Annotated[str | None, typer.Option()] = None,
    allow_private: Annotated[
        bool, typer.Option(help="Allow a URL on a private or loopback address (labs, tests).")
    ] = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Import targets: CSV with a `domain` column, one domain a line, or instance-directory JSON
    (joinmastodon servers API, Fediverse Observer export); or a list shipped with the collector."""
    # The importers bring aiohttp: only this command needs them.
    from collector.services.importers import load_targets  # noqa: PLC0415

    result: ImportResult
    try:
        if builtin is not None:
            name = f"builtin:{_checked_builtin(builtin, source)}"
            result = _builtin(builtin, language)
        else:
            name = _checked_source(source)
            result = asyncio.run(load_targets(name, language=language, allow_private=allow_private))
    except (OSError, ValueError) as exc:
        raise invalid(str(exc)) from None
    with sessions(admin_settings(database_url)) as factory, session_scope(factory) as session:
        rows = TargetService().add(
            session, [t.domain for t in result.targets], group=group, source=name[:200]
        )
    typer.echo(
        f"{len(rows)} target(s) imported, {len(result.skipped)} skipped, "
        f"{result.filtered_out} in other languages"
    )
    for raw, reason in result.skipped[:20]:
        err.print(f"  skipped {raw!r}: {reason}", highlight=False)


def _checked_source(source: str | None) -> str:
    if source is None:
        raise invalid("give a FILE or URL to import, or --builtin NAME")
    return source


def _checked_builtin(builtin: str, source: str | None) -> str:
    if source is not None:
        raise invalid(f"give either {source!r} or --builtin {builtin}, not both")
    if builtin not in BUILTIN_LISTS:
        raise invalid(f"unknown builtin list {builtin!r}; known: {', '.join(BUILTIN_LISTS)}")
    return builtin


def _builtin(name: str, language: str | None) -> ImportResult:
    from collector.services.importers import parse_targets  # noqa: PLC0415

    data = (resources.files("collector") / "data" / BUILTIN_LISTS[name]).read_bytes()
    return parse_targets(data, language=language, source_name=f"builtin:{name}")


@app.command("list")
def targets_list(
    as_json: Annotated[bool, typer.Option("--json")] = False, database_url: DatabaseUrl = None
) -> None:
    """List the targets."""
    with sessions(admin_settings(database_url)) as factory, session_scope(factory) as session:
        rows = [
            (t.domain, t.group.name if t.group else None, t.kind)
            for t in TargetService().all(session)
        ]
    if as_json:
        typer.echo(json.dumps([{"domain": d, "group": g, "kind": k} for d, g, k in rows]))
        return
    table = Table("domain", "group", "kind")
    for d, g, k in rows:
        table.add_row(d, g or "-", k)
    Console().print(table)
