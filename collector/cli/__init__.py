"""``blockwatch-collector``: serve, migrate, and administer targets and probes.

Every option also reads ``BLOCKWATCH_<OPTION>`` (docs/architecture.md, "Public interfaces").
Administration commands work on the database directly, through the same
services as the API.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from collector import __version__
from collector.core.clock import SystemClock
from collector.core.db import make_engine, make_session_factory, migrate, session_scope
from collector.core.errors import CollectorError
from collector.core.settings import CollectorSettings, Mode
from collector.services.probes import ProbeService
from collector.services.targets import TargetService
from probe_agent.protocol.errors import InvalidOptionError
from probe_agent.protocol.inputs import parse_duration

app = typer.Typer(
    name="blockwatch-collector",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
targets_app = typer.Typer(no_args_is_help=True, help="The instance domains probes measure.")
probes_app = typer.Typer(no_args_is_help=True, help="Probe enrollment tokens and probes.")
app.add_typer(targets_app, name="targets")
app.add_typer(probes_app, name="probes")
subs_app = typer.Typer(
    no_args_is_help=True, help="Alert subscriptions (operators: active at once)."
)
app.add_typer(subs_app, name="subscriptions")
err = Console(stderr=True)
EXIT_INVALID = 2


def _env(name: str) -> str:
    return f"BLOCKWATCH_{name}"


DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar=_env("DATABASE_URL"),
        help="sqlite:///./blockwatch.db (default) or postgresql://user@host/db",
    ),
]


def _settings(**overrides: Any) -> CollectorSettings:
    try:
        return CollectorSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        err.print(f"[bold red]error:[/] {first.get('msg')}", highlight=False)
        raise typer.Exit(EXIT_INVALID) from None


def _admin_settings(database_url: str | None) -> CollectorSettings:
    # Administration needs the database only: no admin token is involved.
    return _settings(database_url=database_url, mode=Mode.LAB)


@contextmanager
def _sessions(settings: CollectorSettings) -> Iterator[Any]:
    """A migrated database's session factory, its engine disposed of on the way out."""
    engine = make_engine(settings.database_url)
    try:
        migrate(engine)
        yield make_session_factory(engine)
    finally:
        engine.dispose()


def _duration(text: str | None, *, allow_zero: bool = False) -> float | None:
    """``90``, ``30s``, ``5m``, ``2h`` -> seconds; None stays None."""
    if text is None:
        return None
    if allow_zero and text.strip() in {"0", "0s"}:
        return 0.0
    try:
        return parse_duration(text)
    except InvalidOptionError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(EXIT_INVALID) from None


def _fail(exc: CollectorError) -> typer.Exit:
    err.print(f"[bold red]error:[/] {exc.message} ({exc.code})", highlight=False)
    return typer.Exit(EXIT_INVALID if exc.status < 500 else 1)


@app.command()
def serve(
    database_url: DatabaseUrl = None,
    host: Annotated[str, typer.Option(envvar=_env("HOST"))] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar=_env("PORT"), min=1, max=65535)] = 8080,
    open_enrollment: Annotated[bool, typer.Option(envvar=_env("OPEN_ENROLLMENT"))] = False,
    no_control: Annotated[bool, typer.Option(envvar=_env("NO_CONTROL"))] = False,
    admin_token: Annotated[str | None, typer.Option(envvar=_env("ADMIN_TOKEN"))] = None,
    ca_file: Annotated[Path | None, typer.Option(envvar=_env("CA_FILE"))] = None,
    measure_interval: Annotated[
        str | None,
        typer.Option(
            envvar=_env("MEASURE_INTERVAL"),
            help="Control prober's interval, handed to probes too (90, 30s, 5m). Default 5m.",
        ),
    ] = None,
    control_resolver: Annotated[
        list[str] | None,
        typer.Option(
            help="Resolver IP[:PORT] of the control prober, repeatable. Default: the system's "
            "(in production; the lab and demo modes need it named, or run no control).",
        ),
    ] = None,
    lab_network: Annotated[
        list[str] | None,
        typer.Option(help="CIDR treated as globally routable (labs), repeatable."),
    ] = None,
    control_concurrency: Annotated[
        int | None, typer.Option(envvar=_env("CONTROL_CONCURRENCY"), min=1, max=4096)
    ] = None,
    control_port: Annotated[
        int | None,
        typer.Option(
            envvar=_env("CONTROL_PORT"), min=1, max=65535, help="Instances' HTTPS port (443)."
        ),
    ] = None,
    control_timeout: Annotated[
        float | None, typer.Option(envvar=_env("CONTROL_TIMEOUT"), min=0.1, help="Seconds.")
    ] = None,
    detect_interval: Annotated[
        str | None,
        typer.Option(envvar=_env("DETECT_INTERVAL"), help="Time between detection passes (15s)."),
    ] = None,
    detect_window: Annotated[
        str | None,
        typer.Option(
            envvar=_env("DETECT_WINDOW"),
            help="Sliding window of the detector (default: 3 measure intervals).",
        ),
    ] = None,
    control_window: Annotated[
        str | None,
        typer.Option(
            envvar=_env("CONTROL_WINDOW"),
            help="Greatest time between a measurement and its control (default: 1 interval).",
        ),
    ] = None,
    control_wait: Annotated[
        str | None,
        typer.Option(
            envvar=_env("CONTROL_WAIT"),
            help="How long a failed measurement waits for a control taken after it "
            "(default: 1 interval + 60s), then is unknown.",
        ),
    ] = None,
    open_min_probes: Annotated[
        int | None,
        typer.Option(envvar=_env("OPEN_MIN_PROBES"), min=1, help="Probes that open an event (2)."),
    ] = None,
    stay_min_probes: Annotated[
        int | None,
        typer.Option(
            envvar=_env("STAY_MIN_PROBES"), min=1, help="Blocked probes that keep one open (1)."
        ),
    ] = None,
    close_min_probes: Annotated[
        int | None,
        typer.Option(
            envvar=_env("CLOSE_MIN_PROBES"),
            min=1,
            help="Probes of the affected networks that must say ok to close it (2).",
        ),
    ] = None,
    collapse_ratio: Annotated[
        float | None,
        typer.Option(
            envvar=_env("COLLAPSE_RATIO"),
            min=0.01,
            max=0.99,
            help="Reporting probes, as a share of their peak, that is reported as a collapse.",
        ),
    ] = None,
    residual: Annotated[
        str | None,
        typer.Option(
            envvar=_env("RESIDUAL"),
            help="How long after an SNI trigger a probe's failures on that address are residue "
            "(the GFW's 90-180s; default 180s).",
        ),
    ] = None,
    no_detector: Annotated[
        bool,
        typer.Option(
            envvar=_env("NO_DETECTOR"),
            help="Serve the API only: no detector, no control prober (another replica runs them).",
        ),
    ] = False,
    webhook_allow_private: Annotated[
        bool, typer.Option(envvar=_env("WEBHOOK_ALLOW_PRIVATE"))
    ] = False,
    mode: Annotated[Mode | None, typer.Option(envvar=_env("MODE"))] = None,
    workers: Annotated[
        int,
        typer.Option(
            envvar=_env("WORKERS"),
            min=1,
            max=64,
            help="Processes serving the API (one per core on a busy collector).",
        ),
    ] = 1,
) -> None:
    """Run the API, /metrics and the web pages (migrations run first)."""
    import uvicorn  # noqa: PLC0415 (only serve needs it)

    from collector.api.app import create_app  # noqa: PLC0415

    settings = _settings(
        database_url=database_url,
        host=host,
        port=port,
        open_enrollment=open_enrollment,
        no_control=no_control,
        admin_token=admin_token,
        ca_file=ca_file,
        measure_interval=_duration(measure_interval),
        webhook_allow_private=webhook_allow_private,
        mode=mode,
        control_resolvers=",".join(control_resolver) if control_resolver else None,
        lab_networks=",".join(lab_network) if lab_network else None,
        control_concurrency=control_concurrency,
        control_port=control_port,
        control_timeout=control_timeout,
        detect_interval=_duration(detect_interval),
        detect_window=_duration(detect_window),
        control_window=_duration(control_window),
        control_wait=_duration(control_wait),
        open_min_probes=open_min_probes,
        stay_min_probes=stay_min_probes,
        close_min_probes=close_min_probes,
        collapse_ratio=collapse_ratio,
        residual_seconds=_duration(residual, allow_zero=True),
        detector=False if no_detector else None,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # Many short-lived objects per request, few cycles: collect the young generation rarely.
    gc.set_threshold(50_000, 50, 100)
    # access_log off: uvicorn's access log prints every client's address.
    common: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "access_log": False,
        "log_level": "info",
        "server_header": False,
    }
    if workers == 1:
        uvicorn.run(create_app(settings), **common)
        return
    # Several processes: each builds its settings from the environment, so the
    # options given here are exported; migrations run once, here, first.
    with _sessions(settings), tempfile.TemporaryDirectory(prefix="blockwatch-metrics-") as tmp:
        os.environ.update(_as_environment(settings))
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tmp
        uvicorn.run(
            "collector.api.app:create_app_from_env", factory=True, workers=workers, **common
        )


def _as_environment(settings: CollectorSettings) -> dict[str, str]:
    """``BLOCKWATCH_*`` variables that rebuild *settings* in a worker process."""
    out: dict[str, str] = {}
    for name, value in settings.model_dump(mode="json").items():
        if name == "admin_token":
            text = settings.admin_token.get_secret_value()
        elif value is None:
            continue
        else:
            text = str(value).lower() if isinstance(value, bool) else str(value)
        out[f"BLOCKWATCH_{name.upper()}"] = text
    return out


@app.command("migrate")
def migrate_command(database_url: DatabaseUrl = None) -> None:
    """Apply the database migrations and exit."""
    with _sessions(_admin_settings(database_url)):
        typer.echo("migrated")


@app.command()
def version() -> None:
    """Print the collector's version."""
    typer.echo(f"blockwatch-collector {__version__}")


@targets_app.command("add")
def targets_add(
    domains: list[str],
    group: Annotated[str | None, typer.Option(help="The instance group.")] = None,
    kind: Annotated[str, typer.Option(help="primary, mirror or alias.")] = "primary",
    database_url: DatabaseUrl = None,
) -> None:
    """Add DOMAIN... (to a group: an instance with its mirrors and aliases)."""
    try:
        with (
            _sessions(_admin_settings(database_url)) as sessions,
            session_scope(sessions) as session,
        ):
            rows = TargetService().add(session, domains, group=group, kind=kind, source="cli")
            typer.echo(f"{len(rows)} target(s) added")
    except CollectorError as exc:
        raise _fail(exc) from None


@targets_app.command("remove")
def targets_remove(domain: str, database_url: DatabaseUrl = None) -> None:
    """Remove DOMAIN."""
    try:
        with (
            _sessions(_admin_settings(database_url)) as sessions,
            session_scope(sessions) as session,
        ):
            TargetService().remove(session, domain)
    except CollectorError as exc:
        raise _fail(exc) from None


@targets_app.command("import")
def targets_import(
    source: Annotated[str, typer.Argument(help="A file or an http(s) URL.")],
    language: Annotated[str | None, typer.Option(help="Keep only this language, e.g. zh.")] = None,
    group: Annotated[str | None, typer.Option()] = None,
    allow_private: Annotated[
        bool, typer.Option(help="Allow a URL on a private or loopback address (labs, tests).")
    ] = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Import targets: CSV with a `domain` column, one domain a line, or instance-directory JSON
    (joinmastodon servers API, Fediverse Observer export)."""
    from collector.services.importers import load_targets  # noqa: PLC0415

    try:
        result = asyncio.run(load_targets(source, language=language, allow_private=allow_private))
    except (OSError, ValueError) as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(EXIT_INVALID) from None
    with _sessions(_admin_settings(database_url)) as sessions, session_scope(sessions) as session:
        rows = TargetService().add(
            session, [t.domain for t in result.targets], group=group, source=source[:200]
        )
    typer.echo(
        f"{len(rows)} target(s) imported, {len(result.skipped)} skipped, "
        f"{result.filtered_out} in other languages"
    )
    for raw, reason in result.skipped[:20]:
        err.print(f"  skipped {raw!r}: {reason}", highlight=False)


@targets_app.command("list")
def targets_list(
    as_json: Annotated[bool, typer.Option("--json")] = False, database_url: DatabaseUrl = None
) -> None:
    """List the targets."""
    with _sessions(_admin_settings(database_url)) as sessions, session_scope(sessions) as session:
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


def _short(value: str | None) -> str:
    return value[:19].replace("T", " ") if value else "-"


@subs_app.command("add")
def subscriptions_add(
    domain: Annotated[str | None, typer.Argument(help="The domain (or use --group).")] = None,
    group: Annotated[str | None, typer.Option(help="A whole instance group.")] = None,
    channel: Annotated[
        str, typer.Option(help="webhook, slack, discord, matrix, ntfy, mastodon.")
    ] = "webhook",
    setting: Annotated[
        list[str] | None,
        typer.Option(help="Channel setting KEY=VALUE, repeatable (url=https://..., room_id=...)."),
    ] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Subscribe (as the operator: no ownership challenge). Prints the secrets once."""
    from collector.services.subscriptions import SubscriptionService  # noqa: PLC0415

    values: dict[str, str] = {}
    for item in setting or []:
        key, sep, value = item.partition("=")
        if not sep:
            err.print(f"[bold red]error:[/] --setting {item!r}: expected KEY=VALUE")
            raise typer.Exit(EXIT_INVALID)
        values[key.strip()] = value
    settings = _admin_settings(database_url)
    try:
        with _sessions(settings) as sessions, session_scope(sessions) as session:
            row, token = SubscriptionService(settings).create(
                session, domain=domain, group=group, channel=channel, channel_settings=values,
                admin=True,
            )  # fmt: skip
            sub_id, secret = row.id, row.secret
    except CollectorError as exc:
        raise _fail(exc) from None
    typer.echo(f"subscription {sub_id} (active)")
    typer.echo(f"management token: {token}")
    if secret:
        typer.echo(f"signing secret: {secret}")


@subs_app.command("list")
def subscriptions_list(
    as_json: Annotated[bool, typer.Option("--json")] = False, database_url: DatabaseUrl = None
) -> None:
    """Every subscription, with its state and last error (secrets never shown)."""
    from collector.services.subscriptions import (  # noqa: PLC0415
        SubscriptionService,
        subscription_json,
    )

    settings = _admin_settings(database_url)
    with _sessions(settings) as sessions, session_scope(sessions) as session:
        subs = [
            subscription_json(r, settings)
            for r in SubscriptionService(settings).owned(session, None, admin=True)
        ]
    if as_json:
        typer.echo(json.dumps(subs))
        return
    table = Table("id", "domain/group", "channel", "state", "last delivery", "last error")
    for sub in subs:
        target = sub["domain"] or f"group {sub['group']}"
        seen = _short(sub["last_delivery_at"])
        table.add_row(
            sub["id"], target, sub["channel"], sub["state"], seen, sub["last_error"] or "-"
        )
    Console().print(table)


def _subscription_action(action: str, sub_id: str, database_url: str | None) -> None:
    from collector.services.subscriptions import SubscriptionService  # noqa: PLC0415

    settings = _admin_settings(database_url)
    try:
        with _sessions(settings) as sessions, session_scope(sessions) as session:
            service = SubscriptionService(settings)
            row = service.get(session, sub_id, None, admin=True)
            if action == "pause":
                service.pause(row)
            elif action == "resume":
                service.resume(row)
            elif action == "rotate":
                typer.echo(f"new signing secret: {service.rotate(row)}")
            else:
                service.delete(session, row)
    except CollectorError as exc:
        raise _fail(exc) from None
    done = {"pause": "paused", "resume": "resumed", "rotate": "rotated", "delete": "deleted"}
    typer.echo(f"{sub_id}: {done[action]}")


def _subscription_command(action: str, doc: str) -> None:
    def command(sub_id: str, database_url: DatabaseUrl = None) -> None:
        _subscription_action(action, sub_id, database_url)

    command.__doc__ = doc
    subs_app.command(action)(command)


for _action, _doc in (
    ("pause", "Stop deliveries for a while (they wait, and go out on resume)."),
    ("resume", "Resume a paused, failing or disabled subscription."),
    ("rotate", "A new webhook signing secret (printed once)."),
    ("delete", "Delete a subscription and its pending deliveries."),
):
    _subscription_command(_action, _doc)


@app.command("events")
def events_command(
    domain: Annotated[str | None, typer.Option(help="Only this domain.")] = None,
    cc: Annotated[str | None, typer.Option(help="Only this country (CN).")] = None,
    state: Annotated[str | None, typer.Option(help="open or closed.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines, as the API.")] = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Block events, newest first (the API's GET /api/v1/events, for the terminal)."""
    from collector.services.events import EventService  # noqa: PLC0415

    try:
        with (
            _sessions(_admin_settings(database_url)) as sessions,
            session_scope(sessions) as session,
        ):
            events = EventService().events(session, domain=domain, cc=cc, state=state, limit=limit)
    except CollectorError as exc:
        raise _fail(exc) from None
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
            _short(e["started_at"]),
            _short(e["detected_at"]),
            _short(e["ended_at"]),
            str(e["probes"]),
        )
    Console().print(table)


@app.command("status")
def status_command(
    domain: str,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    database_url: DatabaseUrl = None,
) -> None:
    """A domain's state in each network, and its mirrors' (GET /api/v1/status/DOMAIN)."""
    from collector.services.events import EventService  # noqa: PLC0415

    try:
        with (
            _sessions(_admin_settings(database_url)) as sessions,
            session_scope(sessions) as session,
        ):
            status = EventService().status(session, domain)
    except CollectorError as exc:
        raise _fail(exc) from None
    if as_json:
        typer.echo(json.dumps(status))
        return
    colours = {"ok": "green", "blocked": "red", "down": "yellow", "unknown": "dim"}
    table = Table("domain", "cc", "ASN", "state", "methods", "since", "probes")
    for name, networks in [(status["domain"], status["networks"])] + [
        (m["domain"], m["networks"]) for m in status["mirrors"]
    ]:
        for n in networks or [{"cc": "-", "asn": 0, "state": "unknown", "methods": [],
                               "since": None, "probes": 0}]:  # fmt: skip
            colour = colours.get(n["state"], "white")
            table.add_row(name, n["cc"], f"AS{n['asn']}", f"[{colour}]{n['state']}[/]",
                          ",".join(n["methods"]), _short(n["since"]), str(n["probes"]))  # fmt: skip
    Console().print(table)


@probes_app.command("token")
def probes_token(
    uses: Annotated[int, typer.Option(min=1, help="How many probes may enroll with it.")] = 1,
    expires: Annotated[float, typer.Option(help="Hours until it expires.")] = 24.0,
    role: Annotated[str, typer.Option(help="probe or control.")] = "probe",
    note: Annotated[str | None, typer.Option()] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Print a new enrollment token (shown once; only its hash is stored)."""
    settings = _admin_settings(database_url)
    try:
        with _sessions(settings) as sessions, session_scope(sessions) as session:
            token, _ = ProbeService(settings, SystemClock()).create_token(
                session, uses=uses, expires_in=expires * 3600, role=role, note=note
            )
    except CollectorError as exc:
        raise _fail(exc) from None
    typer.echo(token)


@probes_app.command("list")
def probes_list(
    as_json: Annotated[bool, typer.Option("--json")] = False, database_url: DatabaseUrl = None
) -> None:
    """List the probes."""
    from collector.api.routes.probes import probe_out  # noqa: PLC0415

    settings = _admin_settings(database_url)
    with _sessions(settings) as sessions, session_scope(sessions) as session:
        probes = [probe_out(p) for p in ProbeService(settings, SystemClock()).all(session)]
    if as_json:
        typer.echo(json.dumps([p.model_dump(mode="json") for p in probes]))
        return
    table = Table("probe", "status", "role", "network", "last check-in", "spool")
    for p in probes:
        network = f"{p.cc} AS{p.asn} ({p.network_source})" if p.cc else "-"
        seen = p.last_checkin_at.isoformat(timespec="seconds") if p.last_checkin_at else "-"
        table.add_row(p.probe_id, p.status, p.role, network, seen, str(p.spool_depth))
    Console().print(table)


def _probe_action(action: str, probe_id: str, database_url: str | None) -> None:
    settings = _admin_settings(database_url)
    try:
        with _sessions(settings) as sessions, session_scope(sessions) as session:
            service = ProbeService(settings, SystemClock())
            probe = getattr(service, action)(session, probe_id)
            typer.echo(f"{probe.id}: {probe.status}")
    except CollectorError as exc:
        raise _fail(exc) from None


@probes_app.command("revoke")
def probes_revoke(probe_id: str, database_url: DatabaseUrl = None) -> None:
    """Revoke a probe: its keys sign nothing the collector accepts any more."""
    _probe_action("revoke", probe_id, database_url)


@probes_app.command("approve")
def probes_approve(probe_id: str, database_url: DatabaseUrl = None) -> None:
    """Approve a probe waiting in the enrollment queue."""
    _probe_action("approve", probe_id, database_url)


@app.callback()
def _root() -> None:
    """Verify, store and analyse Blockwatch probe measurements."""


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
