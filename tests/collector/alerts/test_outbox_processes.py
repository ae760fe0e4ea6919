"""The outbox across real collector processes: kill -9 mid-delivery, two senders on PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from sqlalchemy import func, select

from collector.core.db import make_engine, make_session_factory, migrate, session_scope
from collector.core.models import DeliveryRow
from collector.core.settings import CollectorSettings
from collector.services.subscriptions import SubscriptionService
from collector.services.targets import TargetService
from tests.collector.alerts.test_delivery import DOMAIN, change
from tests.collector.conftest import FakeClock
from tests.collector.serving import ServedCollector
from tests.support.aiohttp_site import serve_app

pytestmark = pytest.mark.integration


class SlowReceiver:
    """Counts webhook-ids; can hang on its first request (a collector dies meanwhile)."""

    def __init__(self, hang_first: float = 0.0, delay: float = 0.0) -> None:
        self.hang_first, self.delay = hang_first, delay
        self.ids: list[str] = []
        self.url = ""
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.ids.append(request.headers["webhook-id"])
        if len(self.ids) == 1 and self.hang_first:
            await asyncio.sleep(self.hang_first)
        elif self.delay:
            await asyncio.sleep(self.delay)
        return web.json_response({})

    def __enter__(self) -> SlowReceiver:
        self.thread.start()

        async def start() -> web.AppRunner:
            app = web.Application()
            app.router.add_post("/hook", self.handle)
            runner, port = await serve_app(app, shutdown_timeout=0.1)
            self.url = f"http://127.0.0.1:{port}/hook"
            return runner

        self.runner = asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def shutdown() -> None:
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:  # a handler still hanging on the killed collector's request
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)
            await self.runner.cleanup()

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def prepared(settings: CollectorSettings) -> Iterator[Any]:
    engine = make_engine(settings.database_url)
    migrate(engine)
    sessions = make_session_factory(engine)
    with session_scope(sessions) as s:
        TargetService().add(s, [DOMAIN])
    yield sessions
    engine.dispose()


def add_subscription(sessions: Any, settings: CollectorSettings, url: str) -> None:
    allowed = settings.model_copy(update={"webhook_allowlist": "127.0.0.0/8"})
    with session_scope(sessions) as s:
        SubscriptionService(allowed).create(
            s, domain=DOMAIN, group=None, channel="webhook", channel_settings={"url": url},
            admin=True,
        )  # fmt: skip


def delivery_states(sessions: Any) -> dict[str, int]:
    with session_scope(sessions) as s:
        rows = s.execute(select(DeliveryRow.state, func.count()).group_by(DeliveryRow.state))
        return {state: count for state, count in rows}


def wait_for(condition: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


SERVE = ["--webhook-allow-private", "--detect-interval", "0.5s"]
ENV = {"BLOCKWATCH_ALERT_TIMEOUT": "2", "BLOCKWATCH_ALERT_INTERVAL": "0.2"}


def env(settings: CollectorSettings) -> dict[str, str]:
    """ENV, and the sealing key the test's settings have (SQLite: the file both find)."""
    return {**ENV, "BLOCKWATCH_SECRET_KEY": settings.secret_key.get_secret_value()}


def test_kill_9_mid_delivery_then_delivered_after_restart(
    prepared: Any, settings: CollectorSettings, tmp_path: Path
) -> None:
    with SlowReceiver(hang_first=30) as receiver:
        add_subscription(prepared, settings, receiver.url)
        change(prepared, FakeClock(), "opened")
        first = ServedCollector(
            settings.database_url, tmp_path / "a.log", SERVE, env(settings)
        ).start()
        try:
            assert wait_for(lambda: len(receiver.ids) == 1, 20), "never sent"
            assert delivery_states(prepared) == {"sending": 1}
        finally:
            first.kill9()  # mid-request: the receiver never answered it
        second = ServedCollector(
            settings.database_url, tmp_path / "b.log", SERVE, env(settings)
        ).start()
        try:
            assert wait_for(lambda: delivery_states(prepared) == {"delivered": 1}, 30), (
                delivery_states(prepared)
            )
        finally:
            second.stop()
    assert len(receiver.ids) == 2 and len(set(receiver.ids)) == 1  # the receiver dedupes


def test_two_collectors_on_postgresql_send_each_delivery_once(
    prepared: Any, settings: CollectorSettings, database_url: str, tmp_path: Path
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("several senders share one PostgreSQL (SQLite: the lease holder sends)")
    with SlowReceiver(delay=0.05) as receiver:
        for _ in range(3):
            add_subscription(prepared, settings, receiver.url)
        clock = FakeClock()
        for _ in range(40):
            change(prepared, clock, "opened")
        collectors = [
            ServedCollector(
                settings.database_url, tmp_path / f"{n}.log", SERVE, env(settings)
            ).start()
            for n in ("a", "b")
        ]
        try:
            assert wait_for(lambda: delivery_states(prepared) == {"delivered": 120}, 90), (
                delivery_states(prepared)
            )
        finally:
            for served in collectors:
                served.stop()
    assert len(receiver.ids) == 120 and len(set(receiver.ids)) == 120
    # Both processes sent some: the work was shared, not serialized by a lease.
    logs = [json.dumps(c.log.read_text()) for c in collectors]
    assert all(logs)
