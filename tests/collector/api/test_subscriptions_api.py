"""Subscriptions through the API: ownership challenge (TXT and file), management token, admin."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from fastapi.testclient import TestClient

from collector.api.app import create_app
from collector.core.settings import CollectorSettings
from tests.collector.conftest import CLIENT_IP, FakeClock, FakeGeolocator
from tests.collector.helpers import ADMIN
from tests.support.aiohttp_site import serve_app
from tests.support.dns_server import DNSRecord, DNSServer
from tests.support.pki import TestPKI

DOMAIN = "alive.bar"


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop in a thread: the servers must answer while a sync test waits."""
    running = asyncio.new_event_loop()
    thread = threading.Thread(target=running.run_forever, daemon=True)
    thread.start()
    yield running
    running.call_soon_threadsafe(running.stop)
    thread.join(timeout=5)
    running.close()


def run(loop: asyncio.AbstractEventLoop, coro: Any) -> Any:
    return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=10)


@pytest.fixture
def dns_server(loop: asyncio.AbstractEventLoop) -> Iterator[DNSServer]:
    server = DNSServer("127.0.0.1", 0)
    run(loop, server.start())
    server.records[DOMAIN] = DNSRecord(a=["127.0.0.1"])
    yield server
    run(loop, server.stop())


class WellKnown:
    """The instance's HTTPS site, serving /.well-known/blockwatch.txt when told to."""

    def __init__(self) -> None:
        self.body: str | None = None
        self.port = 0
        self.languages: list[str] | None = None  # /api/v2/instance's, when it is a Mastodon

    async def handle(self, _request: web.Request) -> web.Response:
        if self.body is None:
            return web.Response(status=404)
        return web.Response(text=self.body)

    async def instance(self, _request: web.Request) -> web.Response:
        if self.languages is None:
            return web.Response(status=404)
        return web.json_response({"domain": DOMAIN, "languages": self.languages})


@pytest.fixture
def site(loop: asyncio.AbstractEventLoop, tmp_path: Path) -> Iterator[tuple[WellKnown, Path]]:
    pki = TestPKI.create(tmp_path / "pki")
    known = WellKnown()

    async def start() -> web.AppRunner:
        app = web.Application()
        app.router.add_get("/.well-known/blockwatch.txt", known.handle)
        app.router.add_get("/api/v2/instance", known.instance)
        runner, known.port = await serve_app(app, ssl_context=pki.server_context([DOMAIN]))
        return runner

    runner = run(loop, start())
    yield known, pki.ca_file
    run(loop, runner.cleanup())


@pytest.fixture
def api(
    settings: CollectorSettings,
    dns_server: DNSServer,
    site: tuple[WellKnown, Path],
    geolocator: FakeGeolocator,
    clock: FakeClock,
) -> Iterator[TestClient]:
    known, ca_file = site
    configured = settings.model_copy(
        update={
            "control_resolvers": dns_server.endpoint,
            "control_port": known.port,
            "ca_file": ca_file,
            "webhook_allowlist": "127.0.0.0/8",
            "alert_timeout": 3.0,
        }
    )
    app = create_app(configured, geolocator=geolocator, clock=clock)
    with TestClient(app, client=(CLIENT_IP, 40000)) as client:
        answer = client.post(
            "/api/v1/targets", json={"domains": [DOMAIN], "group": "alive"}, headers=ADMIN
        )
        assert answer.status_code == 201
        yield client


def subscribe(client: TestClient, **body: Any) -> dict[str, Any]:
    answer = client.post(
        "/api/v1/subscriptions",
        json={"domain": DOMAIN, "channel": "webhook", "url": "https://hooks.example/x", **body},
    )
    assert answer.status_code == 201, answer.text
    result: dict[str, Any] = answer.json()
    return result


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_anyone_subscribes_pending_with_a_challenge(api: TestClient) -> None:
    sub = subscribe(api)
    assert sub["state"] == "pending" and sub["domain"] == DOMAIN
    assert sub["secret"].startswith("whsec_") and sub["token"].startswith("bwm_")
    challenge = sub["challenge"]
    assert challenge["txt_name"] == f"_blockwatch.{DOMAIN}"
    assert challenge["file_url"].endswith("/.well-known/blockwatch.txt")
    # Without the challenge published, verification fails and nothing changes.
    answer = api.post(f"/api/v1/subscriptions/{sub['id']}/verify", headers=bearer(sub["token"]))
    assert answer.status_code == 422
    assert answer.json()["error"]["code"] == "err_verification_failed"


def test_verified_by_txt_record(api: TestClient, dns_server: DNSServer) -> None:
    sub = subscribe(api)
    dns_server.txt[f"_blockwatch.{DOMAIN}"] = [sub["challenge"]["txt_value"]]
    answer = api.post(f"/api/v1/subscriptions/{sub['id']}/verify", headers=bearer(sub["token"]))
    assert answer.status_code == 200, answer.text
    assert answer.json()["state"] == "active" and answer.json()["verified_by"] == "txt"


def test_verified_by_well_known_file(api: TestClient, site: tuple[WellKnown, Path]) -> None:
    sub = subscribe(api)
    site[0].body = sub["challenge"]["token"] + "\n"
    answer = api.post(f"/api/v1/subscriptions/{sub['id']}/verify", headers=bearer(sub["token"]))
    assert answer.status_code == 200, answer.text
    assert answer.json()["verified_by"] == "file"


def test_a_wrong_token_in_the_file_does_not_verify(
    api: TestClient, site: tuple[WellKnown, Path]
) -> None:
    sub = subscribe(api)
    site[0].body = "bwv_someone-elses-token"
    answer = api.post(f"/api/v1/subscriptions/{sub['id']}/verify", headers=bearer(sub["token"]))
    assert answer.status_code == 422


def test_admin_subscriptions_are_active_at_once_and_may_name_a_group(api: TestClient) -> None:
    answer = api.post(
        "/api/v1/subscriptions",
        json={"group": "alive", "channel": "slack", "url": "https://hooks.slack.example/x"},
        headers=ADMIN,
    )
    assert answer.status_code == 201, answer.text
    assert answer.json()["state"] == "active" and "secret" not in answer.json()
    anonymous = api.post(
        "/api/v1/subscriptions", json={"group": "alive", "url": "https://hooks.example/y"}
    )
    assert anonymous.status_code == 401


def test_owner_lists_pauses_rotates_and_deletes(api: TestClient) -> None:
    mine = subscribe(api)
    other = subscribe(api)
    token = mine["token"]
    listed = api.get("/api/v1/subscriptions", headers=bearer(token)).json()
    assert [s["id"] for s in listed["data"]] == [mine["id"]]
    assert api.get("/api/v1/subscriptions").status_code == 401
    # Someone else's subscription is not even visible.
    assert api.get(f"/api/v1/subscriptions/{other['id']}", headers=bearer(token)).status_code == 404
    api.post(
        f"/api/v1/subscriptions/{mine['id']}/verify", headers=ADMIN
    )  # not published: stays pending
    url = f"/api/v1/subscriptions/{mine['id']}"
    assert api.post(f"{url}/pause", headers=bearer(token)).status_code == 409  # still pending
    rotated = api.post(f"{url}/rotate-secret", headers=bearer(token)).json()
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != mine["secret"]
    assert api.delete(url, headers=bearer(token)).status_code == 204
    assert api.get(url, headers=bearer(token)).status_code == 404
    assert len(api.get("/api/v1/subscriptions", headers=ADMIN).json()["data"]) == 1


def test_secrets_in_settings_are_never_shown_back(api: TestClient) -> None:
    answer = api.post(
        "/api/v1/subscriptions",
        json={"domain": DOMAIN, "channel": "matrix", "settings": {
            "homeserver": "https://matrix.example", "room_id": "!r:example",
            "access_token": "syt_very_secret"}},
        headers=ADMIN,
    )  # fmt: skip
    assert answer.status_code == 201, answer.text
    assert "syt_very_secret" not in answer.text
    listed = api.get("/api/v1/subscriptions", headers=ADMIN).text
    assert "syt_very_secret" not in listed


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"domain": "not-watched.example"}, "err_unknown_target"),
        ({"channel": "carrier-pigeon"}, "err_channel"),
        ({"url": "file:///etc/passwd"}, "err_unsafe_url"),
        ({"channel": "matrix", "url": None}, "err_channel_settings"),
        ({"language": "fr"}, "err_language"),
    ],
)
def test_bad_subscriptions_are_refused_clearly(
    api: TestClient, body: dict[str, Any], code: str
) -> None:
    payload = {"domain": DOMAIN, "channel": "webhook", "url": "https://hooks.example/x", **body}
    answer = api.post("/api/v1/subscriptions", json=payload)
    assert answer.status_code in (404, 422), answer.text
    assert answer.json()["error"]["code"] == code


def test_operator_cli_adds_lists_pauses_rotates_deletes(tmp_path: Path) -> None:
    import subprocess
    import sys

    cli = str(Path(sys.executable).parent / "blockwatch-collector")
    db = ["--database-url", f"sqlite:///{tmp_path}/c.db"]

    def run(*args: str) -> str:
        done = subprocess.run([cli, *args, *db], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    run("targets", "add", DOMAIN)
    added = run("subscriptions", "add", DOMAIN, "--setting", "url=https://hooks.example/x")
    sub_id = added.split()[1]
    assert "signing secret: whsec_" in added and "management token: bwm_" in added
    listed = json.loads(run("subscriptions", "list", "--json"))
    assert [(s["id"], s["state"]) for s in listed] == [(sub_id, "active")]
    assert "paused" in run("subscriptions", "pause", sub_id)
    assert "whsec_" in run("subscriptions", "rotate", sub_id)
    assert "deleted" in run("subscriptions", "delete", sub_id)
    assert json.loads(run("subscriptions", "list", "--json")) == []


def test_the_unverified_queue_is_bounded_per_domain(api: TestClient) -> None:
    api.app.state.settings.max_pending_per_domain = 2  # type: ignore[attr-defined]
    for _ in range(2):
        subscribe(api)
    answer = api.post(
        "/api/v1/subscriptions",
        json={"domain": DOMAIN, "channel": "webhook", "url": "https://hooks.example/y"},
    )
    assert answer.status_code == 429 and answer.json()["error"]["code"] == "err_rate_limited"
    assert "verify or delete one" in answer.json()["error"]["message"]
    # The operator is not queued.
    answer = api.post(
        "/api/v1/subscriptions",
        json={"domain": DOMAIN, "channel": "webhook", "url": "https://hooks.example/z"},
        headers=ADMIN,
    )
    assert answer.status_code == 201, answer.text


def test_ownership_checks_are_rate_limited_per_subscription(api: TestClient) -> None:
    from collector.api.ratelimit import RateLimiter

    api.app.state.verify_limiter = RateLimiter(per_minute=2)  # type: ignore[attr-defined]
    sub, other = subscribe(api), subscribe(api)
    codes = []
    for _ in range(3):
        answer = api.post(f"/api/v1/subscriptions/{sub['id']}/verify", headers=bearer(sub["token"]))
        codes.append(answer.json()["error"]["code"])
    assert codes == ["err_verification_failed", "err_verification_failed", "err_rate_limited"]
    answer = api.post(f"/api/v1/subscriptions/{other['id']}/verify", headers=bearer(other["token"]))
    assert answer.json()["error"]["code"] == "err_verification_failed"  # its own budget


def test_verification_learns_the_instance_language(
    api: TestClient, site: tuple[WellKnown, Path]
) -> None:
    sub = subscribe(api)
    assert (sub["language"], sub["language_source"]) == ("en", "default")
    site[0].body = sub["challenge"]["token"]
    site[0].languages = ["zh", "en"]  # a Chinese-speaking instance, as Mastodon says it
    answer = api.post(f"/api/v1/subscriptions/{sub['id']}/verify", headers=bearer(sub["token"]))
    assert answer.status_code == 200, answer.text
    assert (answer.json()["language"], answer.json()["language_source"]) == ("zh-Hans", "instance")


def test_a_chosen_language_wins_and_can_be_changed(
    api: TestClient, site: tuple[WellKnown, Path]
) -> None:
    sub = subscribe(api, language="zh-CN")
    assert (sub["language"], sub["language_source"]) == ("zh-Hans", "requested")
    site[0].body = sub["challenge"]["token"]
    site[0].languages = ["en"]
    verified = api.post(f"/api/v1/subscriptions/{sub['id']}/verify", headers=bearer(sub["token"]))
    assert verified.json()["language"] == "zh-Hans"  # asked for: the instance's does not override
    url = f"/api/v1/subscriptions/{sub['id']}"
    changed = api.patch(url, json={"language": "en"}, headers=bearer(sub["token"]))
    assert changed.status_code == 200 and changed.json()["language_source"] == "requested"
    back = api.patch(url, json={"language": None}, headers=bearer(sub["token"])).json()
    assert (back["language"], back["language_source"]) == ("en", "instance")
    bad = api.patch(url, json={"language": "tlh"}, headers=bearer(sub["token"]))
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "err_language"
    assert api.patch(url, json={"language": "en"}).status_code == 404  # not without its token
    extra = api.patch(url, json={"url": "https://elsewhere.example"}, headers=bearer(sub["token"]))
    assert extra.status_code == 422  # only the language changes here


def test_an_alert_asks_the_instance_for_its_language_when_nobody_said(
    api: TestClient, site: tuple[WellKnown, Path], clock: FakeClock,
    loop: asyncio.AbstractEventLoop,
) -> None:  # fmt: skip
    """An operator's subscription (no ownership check) learns the language at its first
    message, from the instance's /api/v2/instance, over the control's resolvers."""
    from collector.alerts.outbox import Outbox
    from tests.collector.alerts.test_delivery import change, deliver

    site[0].languages = ["zh"]
    hooks: list[dict[str, Any]] = []

    async def receive(request: web.Request) -> web.Response:
        hooks.append(await request.json())
        return web.Response(status=204)

    async def start() -> tuple[web.AppRunner, int]:
        app = web.Application()
        app.router.add_post("/hook", receive)
        return await serve_app(app)

    runner, port = run(loop, start())
    hook = f"http://127.0.0.1:{port}/hook"
    answer = api.post("/api/v1/subscriptions", json={"domain": DOMAIN, "url": hook},
                      headers=ADMIN)  # fmt: skip
    assert answer.status_code == 201 and answer.json()["language_source"] == "default"
    state = api.app.state  # type: ignore[attr-defined]
    outbox = Outbox(state.settings, clock, state.sessions)
    change(state.sessions, clock, "opened")
    assert asyncio.run(deliver(outbox)) == 1
    run(loop, runner.cleanup())
    [document] = hooks
    assert document["language"] == "zh-Hans"
    assert document["summary"].startswith(f"已被封锁：{DOMAIN} 在中国（CN）")
