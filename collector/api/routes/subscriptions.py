"""Subscriptions: alerts to instance admins (docs/api.md, docs/admin-guide.md)."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from collector.alerts import verify
from collector.api.deps import ClockDep, SessionDep, SettingsDep, get_settings
from collector.core.errors import Unprocessable
from collector.core.settings import CollectorSettings
from collector.netsafety import parse_allowlist
from collector.services.subscriptions import SubscriptionService, subscription_json

router = APIRouter(tags=["subscriptions"])
Text = Annotated[str, StringConstraints(min_length=1, max_length=2000)]


class SubscriptionIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    domain: Annotated[str, StringConstraints(min_length=1, max_length=253)] | None = None
    group: Annotated[str, StringConstraints(min_length=1, max_length=100)] | None = None
    channel: Annotated[str, StringConstraints(min_length=1, max_length=16)] = "webhook"
    url: Text | None = None
    settings: dict[str, Text] = Field(default_factory=dict)
    # en or zh-Hans; absent or null: the instance's own (its /api/v2/instance `languages`)
    language: Annotated[str, StringConstraints(max_length=35)] | None = None


class SubscriptionChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    language: Annotated[str, StringConstraints(max_length=35)] | None


class Caller:
    def __init__(self, token: str | None, admin: bool) -> None:
        self.token, self.admin = token, admin


def get_caller(
    request: Request, settings: Annotated[CollectorSettings, Depends(get_settings)]
) -> Caller:
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    token = presented.strip() if scheme.lower() == "bearer" and presented.strip() else None
    expected = settings.admin_token.get_secret_value()
    admin = bool(token and expected and hmac.compare_digest(token.encode(), expected.encode()))
    return Caller(None if admin else token, admin)


CallerDep = Annotated[Caller, Depends(get_caller)]


@router.post("/subscriptions", status_code=status.HTTP_201_CREATED)
def create_subscription(
    body: SubscriptionIn, caller: CallerDep, session: SessionDep, settings: SettingsDep
) -> dict[str, Any]:
    """Subscribe a domain (or, operators only, a group) to its block events."""
    channel_settings = dict(body.settings)
    for key, value in (body.model_extra or {}).items():
        if isinstance(value, str):
            channel_settings.setdefault(key, value)
    if body.url is not None:
        channel_settings["url"] = body.url
    row, token = SubscriptionService(settings).create(
        session,
        domain=body.domain,
        group=body.group,
        channel=body.channel,
        channel_settings=channel_settings,
        admin=caller.admin,
        language=body.language,
    )
    out = subscription_json(row, settings)
    out["token"] = token  # shown once
    secret = SubscriptionService(settings).secret(row)
    if secret:
        out["secret"] = secret  # shown once (stored sealed)
    return out


@router.get("/subscriptions")
def list_subscriptions(
    caller: CallerDep, session: SessionDep, settings: SettingsDep
) -> dict[str, Any]:
    rows = SubscriptionService(settings).owned(session, caller.token, caller.admin)
    return {"data": [subscription_json(r, settings) for r in rows], "count": len(rows)}


@router.get("/subscriptions/{sub_id}")
def get_subscription(
    sub_id: str, caller: CallerDep, session: SessionDep, settings: SettingsDep
) -> dict[str, Any]:
    row = SubscriptionService(settings).get(session, sub_id, caller.token, caller.admin)
    return subscription_json(row, settings)


@router.post("/subscriptions/{sub_id}/verify")
async def verify_subscription(
    sub_id: str, caller: CallerDep, request: Request, settings: SettingsDep, clock: ClockDep
) -> dict[str, Any]:
    """Check the challenge (TXT record, then file) from the collector's own vantage."""
    sessions = request.app.state.sessions
    service = SubscriptionService(settings)
    with sessions() as session:
        row = service.get(session, sub_id, caller.token, caller.admin)
        domain, challenge = row.domain, row.challenge
    # Each check sends DNS and HTTPS requests from the collector: a few a minute each.
    request.app.state.verify_limiter.check(sub_id)
    if not domain or not challenge:
        raise Unprocessable("nothing to verify", "err_not_pending")
    allow = parse_allowlist(settings.webhook_allowlist)
    if settings.webhook_allow_private:
        allow += parse_allowlist("0.0.0.0/0,::/0")
    found = await verify.owns(settings, domain, challenge, allow)
    if found is None:
        raise Unprocessable(
            f"neither {verify.TXT_PREFIX}{domain} TXT nor {verify.file_url(settings, domain)} "
            "shows the challenge token",
            "err_verification_failed",
        )
    # The instance's own language, for its alerts (unless the subscriber chose one).
    language = await verify.instance_language(settings, domain, allow)
    with sessions() as session:
        row = service.get(session, sub_id, caller.token, caller.admin)
        service.mark_verified(row, clock.now(), language)
        session.commit()
        out = subscription_json(row, settings)
    out["verified_by"] = found
    return out


@router.patch("/subscriptions/{sub_id}")
def change_subscription(
    sub_id: str,
    body: SubscriptionChange,
    caller: CallerDep,
    session: SessionDep,
    settings: SettingsDep,
) -> dict[str, Any]:
    """Change what may change: the language of the messages (null: the instance's)."""
    service = SubscriptionService(settings)
    row = service.get(session, sub_id, caller.token, caller.admin)
    service.set_language(row, body.language)
    session.flush()
    return subscription_json(row, settings)


def _action(name: str) -> Any:
    def act(
        sub_id: str, caller: CallerDep, session: SessionDep, settings: SettingsDep, clock: ClockDep
    ) -> dict[str, Any]:
        service = SubscriptionService(settings)
        row = service.get(session, sub_id, caller.token, caller.admin)
        out: dict[str, Any] = {}
        if name == "pause":
            service.pause(row)
        elif name == "resume":
            service.resume(row)
        else:
            out["secret"] = service.rotate(row, clock.now())  # shown once
        session.flush()
        return subscription_json(row, settings) | out

    return act


router.add_api_route("/subscriptions/{sub_id}/pause", _action("pause"), methods=["POST"])
router.add_api_route("/subscriptions/{sub_id}/resume", _action("resume"), methods=["POST"])
router.add_api_route("/subscriptions/{sub_id}/rotate-secret", _action("rotate"), methods=["POST"])


@router.delete("/subscriptions/{sub_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_subscription(
    sub_id: str, caller: CallerDep, session: SessionDep, settings: SettingsDep
) -> Response:
    service = SubscriptionService(settings)
    service.delete(session, service.get(session, sub_id, caller.token, caller.admin))
    return Response(status_code=status.HTTP_204_NO_CONTENT)
