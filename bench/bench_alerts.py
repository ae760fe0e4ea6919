"""Outbox throughput: signed webhook deliveries per second to a local receiver.

Fills the outbox with N deliveries (N event changes fanned out to one webhook
subscription, the collector's own code path), then runs the real sender (the
claim, the Standard Webhooks signature, the guarded resolver, the bookkeeping)
against an aiohttp receiver on loopback that answers 200 at once. Side by side
in one run: SQLite and PostgreSQL, one sender and two concurrent senders (on
PostgreSQL, as two collector processes would with SKIP LOCKED). Every delivery
must arrive exactly once.

    .venv/bin/python bench/bench_alerts.py [--deliveries 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from collector.alerts.outbox import Outbox
from collector.core.db import make_engine, make_session_factory, migrate, session_scope
from collector.core.models import EventChangeRow, EventRow
from collector.core.secrets import generate_key
from collector.core.settings import CollectorSettings, Mode
from collector.services.events import event_json
from collector.services.subscriptions import SubscriptionService
from collector.services.targets import TargetService

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
PG_DB = "blockwatch_bench_alerts"


class Clock:
    def now(self) -> datetime:
        return datetime.now(UTC)


def fresh_postgres() -> str:
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{PG_DB}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{PG_DB}"'))
    admin.dispose()
    return PG_ADMIN.rsplit("/", 1)[0] + f"/{PG_DB}"


def drop_postgres() -> None:
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{PG_DB}" WITH (FORCE)'))
    admin.dispose()


def fill(sessions: sessionmaker[Session], settings: CollectorSettings, url: str, n: int) -> None:
    now = datetime.now(UTC)
    with session_scope(sessions) as s:
        TargetService().add(s, ["alive.bar"])
        SubscriptionService(settings).create(
            s, domain="alive.bar", group=None, channel="webhook",
            channel_settings={"url": url}, admin=True,
        )  # fmt: skip
        for _ in range(n):
            row = EventRow(
                domain="alive.bar", cc="CN", state="open", scope="national", asns="[4134]",
                methods='["dns","tls"]', volunteers='["a","b"]', evidence='["m1","m2"]',
                started_at=now, detected_at=now, updated_at=now, last_blocked_at=now,
                reporting_probes=2, revision=1, rule_version="r", forged_pool_version="f",
            )  # fmt: skip
            s.add(row)
            s.flush()
            s.add(EventChangeRow(event_id=row.id, kind="opened", revision=1, at=now,
                                 snapshot=json.dumps(event_json(row))))  # fmt: skip


SECRET_KEY = generate_key()


async def run_case(database_url: str, senders: int, n: int, port: int, seen: set[str]) -> float:
    settings = CollectorSettings(
        database_url=database_url,
        mode=Mode.LAB,
        webhook_allowlist="127.0.0.0/8",
        # Secrets are sealed at rest; SQLite keeps its key beside the database, PostgreSQL
        # needs one given (one per run of the bench: its databases are its own).
        secret_key="" if database_url.startswith("sqlite") else SECRET_KEY,
    )
    engine = make_engine(settings.database_url)
    migrate(engine)
    sessions = make_session_factory(engine)
    fill(sessions, settings, f"http://127.0.0.1:{port}/hook", n)
    outboxes = [Outbox(settings, Clock(), sessions) for _ in range(senders)]
    outboxes[0].fan_out(limit=n)
    seen.clear()

    async def sender(outbox: Outbox) -> None:
        async with outbox.http_session() as http:
            while await outbox.send_due(http, limit=100):
                pass

    started = time.perf_counter()
    await asyncio.gather(*(sender(o) for o in outboxes))
    elapsed = time.perf_counter() - started
    engine.dispose()
    if len(seen) != n:
        raise SystemExit(f"{len(seen)} of {n} deliveries arrived")
    return n / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--deliveries", type=int, default=2000)
    args = parser.parse_args()
    seen: set[str] = set()
    duplicates = 0

    async def handle(request: web.Request) -> web.Response:
        nonlocal duplicates
        await request.read()
        message_id = request.headers["webhook-id"]
        duplicates += message_id in seen
        seen.add(message_id)
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    results: list[tuple[str, int, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for senders in (1, 2):
            url = f"sqlite:///{Path(tmp)}/alerts-{senders}.db"
            results.append(
                ("SQLite", senders, await run_case(url, senders, args.deliveries, port, seen))
            )
            pg = fresh_postgres()
            try:
                results.append(
                    (
                        "PostgreSQL",
                        senders,
                        await run_case(pg, senders, args.deliveries, port, seen),
                    )
                )
            finally:
                drop_postgres()
    await runner.cleanup()
    base = results[0][2]
    print(f"\n{args.deliveries} signed webhook deliveries to a loopback receiver (200 at once)")
    print(f"{'database':<12}{'senders':>8}{'deliveries/s':>15}{'vs SQLite x1':>14}")
    for name, senders, rate in results:
        print(f"{name:<12}{senders:>8}{rate:>15.0f}{rate / base:>14.2f}")
    print(f"duplicates received: {duplicates}")


if __name__ == "__main__":
    asyncio.run(main())
