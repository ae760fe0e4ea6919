"""``blockwatch-collector probes`` and ``subscriptions``: the operator's administration.

Each command works on the database directly, through the same services as the
API (as the operator: no enrollment token or ownership challenge is asked for).
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from collector.cli.common import fail, invalid, sessions, short_time
from collector.cli.options import DatabaseUrl, admin_settings
from collector.core.clock import SystemClock
from collector.core.db import session_scope
from collector.core.errors import CollectorError
from collector.core.keys import CollectorKey, KeyFileError, collector_key
from collector.services.probes import ProbeService, anchored

probes_app = typer.Typer(no_args_is_help=True, help="Probe enrollment tokens and probes.")
subscriptions_app = typer.Typer(
    no_args_is_help=True, help="Alert subscriptions (operators: active at once)."
)


@probes_app.command("token")
def probes_token(
    uses: Annotated[
        int, typer.Option(min=1, help="How many probes may enroll with it (one volunteer).")
    ] = 1,
    expires: Annotated[float, typer.Option(help="Hours until it expires.")] = 24.0,
    role: Annotated[str, typer.Option(help="probe or control.")] = "probe",
    note: Annotated[str | None, typer.Option()] = None,
    cc: Annotated[
        str | None, typer.Option(help="Vouch for this country (with --asn): declared counts.")
    ] = None,
    asn: Annotated[int | None, typer.Option(help="Vouch for this AS number (with --cc).")] = None,
    region: Annotated[
        str | None, typer.Option(help="ISO 3166-2 region of the network (CN-GD).")
    ] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Print a new enrollment token (shown once; only its hash is stored).

    Every probe enrolled with one token is one volunteer: its votes count once. The
    token carries the collector key's fingerprint after a dot: a probe enrolling with
    it trusts that collector key only (the collector reads the part before the dot).
    """
    settings = admin_settings(database_url)
    try:
        key: CollectorKey | None = collector_key(settings)
    except KeyFileError as exc:  # e.g. PostgreSQL without BLOCKWATCH_KEY_FILE here
        typer.echo(f"warning: {exc.message}: the token carries no key fingerprint", err=True)
        key = None
    try:
        with sessions(settings) as factory, session_scope(factory) as session:
            token, _ = ProbeService(settings, SystemClock()).create_token(
                session, uses=uses, expires_in=expires * 3600, role=role, note=note,
                cc=cc, asn=asn, region=region,
            )  # fmt: skip
    except CollectorError as exc:
        raise fail(exc) from None
    typer.echo(anchored(token, key.key_id) if key is not None else token)


@probes_app.command("tokens")
def probes_tokens(
    as_json: Annotated[bool, typer.Option("--json")] = False, database_url: DatabaseUrl = None
) -> None:
    """List the enrollment tokens (never the tokens themselves: only hashes are kept)."""
    from collector.api.routes.probes import token_infos  # noqa: PLC0415

    settings = admin_settings(database_url)
    with sessions(settings) as factory, session_scope(factory) as session:
        tokens = token_infos(session, ProbeService(settings, SystemClock()))
    if as_json:
        typer.echo(json.dumps([t.model_dump(mode="json") for t in tokens]))
        return
    table = Table("token", "role", "uses", "probes", "vouches for", "expires", "state", "note")
    for t in tokens:
        network = f"{t.cc} AS{t.asn}" + (f" {t.region}" if t.region else "") if t.cc else "-"
        state = "revoked" if t.revoked_at else "active"
        table.add_row(
            str(t.token_id), t.role, f"{t.uses}/{t.max_uses}", str(t.probes), network,
            t.expires_at.isoformat(timespec="minutes"), state, t.note or "",
        )  # fmt: skip
    Console().print(table)


@probes_app.command("revoke-token")
def probes_revoke_token(token_id: int, database_url: DatabaseUrl = None) -> None:
    """End a token: no more enrollments, and its probes' votes stop counting at the next pass."""
    settings = admin_settings(database_url)
    try:
        with sessions(settings) as factory, session_scope(factory) as session:
            row = ProbeService(settings, SystemClock()).revoke_token(session, token_id)
            typer.echo(f"token {row.id}: revoked")
    except CollectorError as exc:
        raise fail(exc) from None


@probes_app.command("vouch")
def probes_vouch(
    probe_id: str,
    cc: Annotated[str, typer.Option(help="The country you vouch for.")],
    asn: Annotated[int, typer.Option(help="The AS number you vouch for.")],
    region: Annotated[str | None, typer.Option(help="ISO 3166-2 region (CN-GD).")] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Vouch for the network a probe declares: its declared measurements from there count."""
    settings = admin_settings(database_url)
    try:
        with sessions(settings) as factory, session_scope(factory) as session:
            probe = ProbeService(settings, SystemClock()).vouch(session, probe_id, cc, asn, region)
            typer.echo(f"{probe.id}: vouched for {probe.vouched_cc} AS{probe.vouched_asn}")
    except CollectorError as exc:
        raise fail(exc) from None


@probes_app.command("list")
def probes_list(
    as_json: Annotated[bool, typer.Option("--json")] = False, database_url: DatabaseUrl = None
) -> None:
    """List the probes."""
    from collector.api.routes.probes import probe_out  # noqa: PLC0415

    settings = admin_settings(database_url)
    with sessions(settings) as factory, session_scope(factory) as session:
        probes = [probe_out(p) for p in ProbeService(settings, SystemClock()).all(session)]
    if as_json:
        typer.echo(json.dumps([p.model_dump(mode="json") for p in probes]))
        return
    table = Table("probe", "status", "role", "volunteer", "network", "vouched", "last check-in",
                  "spool")  # fmt: skip
    for p in probes:
        network = f"{p.cc} AS{p.asn} ({p.network_source})" if p.cc else "-"
        if p.network_source == "declared" and not p.declared_vouched:
            network += " [not vouched: does not vote]"
        vouched = f"{p.vouched_cc} AS{p.vouched_asn}" if p.vouched_cc else "-"
        seen = p.last_checkin_at.isoformat(timespec="seconds") if p.last_checkin_at else "-"
        table.add_row(p.probe_id, p.status, p.role, p.volunteer, network, vouched, seen,
                      str(p.spool_depth))  # fmt: skip
    Console().print(table)


def _probe_action(action: str, probe_id: str, database_url: str | None) -> None:
    settings = admin_settings(database_url)
    try:
        with sessions(settings) as factory, session_scope(factory) as session:
            service = ProbeService(settings, SystemClock())
            probe = getattr(service, action)(session, probe_id)
            typer.echo(f"{probe.id}: {probe.status}")
    except CollectorError as exc:
        raise fail(exc) from None


@probes_app.command("revoke")
def probes_revoke(probe_id: str, database_url: DatabaseUrl = None) -> None:
    """Revoke a probe: its keys sign nothing the collector accepts any more."""
    _probe_action("revoke", probe_id, database_url)


@probes_app.command("approve")
def probes_approve(probe_id: str, database_url: DatabaseUrl = None) -> None:
    """Approve a probe waiting in the enrollment queue."""
    _probe_action("approve", probe_id, database_url)


@subscriptions_app.command("add")
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
    language: Annotated[
        str | None,
        typer.Option(help="en or zh-Hans. Default: the instance's own (its /api/v2/instance)."),
    ] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Subscribe (as the operator: no ownership challenge). Prints the secrets once."""
    from collector.services.subscriptions import SubscriptionService  # noqa: PLC0415

    values = _channel_settings(setting or [])
    settings = admin_settings(database_url)
    try:
        with sessions(settings) as factory, session_scope(factory) as session:
            service = SubscriptionService(settings)
            row, token = service.create(
                session, domain=domain, group=group, channel=channel, channel_settings=values,
                admin=True, language=language,
            )  # fmt: skip
            sub_id, secret = row.id, service.secret(row)
    except CollectorError as exc:
        raise fail(exc) from None
    typer.echo(f"subscription {sub_id} (active)")
    typer.echo(f"management token: {token}")
    if secret:
        typer.echo(f"signing secret: {secret}")


def _channel_settings(items: list[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise invalid(f"--setting {item!r}: expected KEY=VALUE")
        values[key.strip()] = value
    return values


@subscriptions_app.command("list")
def subscriptions_list(
    as_json: Annotated[bool, typer.Option("--json")] = False, database_url: DatabaseUrl = None
) -> None:
    """Every subscription, with its state and last error (secrets never shown)."""
    from collector.services.subscriptions import (  # noqa: PLC0415
        SubscriptionService,
        subscription_json,
    )

    settings = admin_settings(database_url)
    with sessions(settings) as factory, session_scope(factory) as session:
        subs = [
            subscription_json(r, settings)
            for r in SubscriptionService(settings).owned(session, None, admin=True)
        ]
    if as_json:
        typer.echo(json.dumps(subs))
        return
    table = Table(
        "id", "domain/group", "channel", "language", "state", "last delivery", "last error"
    )
    for sub in subs:
        target = sub["domain"] or f"group {sub['group']}"
        seen = short_time(sub["last_delivery_at"])
        table.add_row(sub["id"], target, sub["channel"], sub["language"], sub["state"], seen,
                      sub["last_error"] or "-")  # fmt: skip
    Console().print(table)


def _subscription_action(action: str, sub_id: str, database_url: str | None) -> None:
    from collector.services.subscriptions import SubscriptionService  # noqa: PLC0415

    settings = admin_settings(database_url)
    try:
        with sessions(settings) as factory, session_scope(factory) as session:
            service = SubscriptionService(settings)
            row = service.get(session, sub_id, None, admin=True)
            if action == "pause":
                service.pause(row)
            elif action == "resume":
                service.resume(row)
            elif action == "rotate":
                new = service.rotate(row, SystemClock().now())
                typer.echo(f"new signing secret: {new} (the old one signs too for 24 hours)")
            else:
                service.delete(session, row)
    except CollectorError as exc:
        raise fail(exc) from None
    done = {"pause": "paused", "resume": "resumed", "rotate": "rotated", "delete": "deleted"}
    typer.echo(f"{sub_id}: {done[action]}")


def _subscription_command(action: str, doc: str) -> None:
    def command(sub_id: str, database_url: DatabaseUrl = None) -> None:
        _subscription_action(action, sub_id, database_url)

    command.__doc__ = doc
    subscriptions_app.command(action)(command)


for _action, _doc in (
    ("pause", "Stop deliveries for a while (they wait, and go out on resume)."),
    ("resume", "Resume a paused, failing or disabled subscription."),
    ("rotate", "A new webhook signing secret (printed once)."),
    ("delete", "Delete a subscription and its pending deliveries."),
):
    _subscription_command(_action, _doc)
