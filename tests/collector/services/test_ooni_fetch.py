"""``ooni fetch`` against a local stand-in of OONI's API (no test leaves the machine).

The stand-in answers as ooni/backend's ``api/ooniapi/measurements.py`` does:
``GET /api/v1/measurements`` (``domain``, ``probe_cc``, ``test_name``, ``since``,
``until``, ``order_by``, ``order``, ``limit``, ``offset``) with ``{"metadata":
{"offset", "limit", "count", "pages", "current_page", "next_url",
"query_time"}, "results": [{"measurement_uid", "measurement_url", "report_id",
"probe_cc", "probe_asn": "AS...", "test_name", "measurement_start_time",
"input", "anomaly", "confirmed", "failure", "scores"}]}``, ``next_url`` set
while a page is full; ``GET /api/v1/raw_measurement?measurement_uid=`` with the
raw measurement (``{}`` when unknown).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
from aiohttp import web
from sqlalchemy import func, select
from typer.testing import CliRunner

from collector.cli import app
from collector.core.db import make_engine, make_session_factory, session_scope
from collector.core.models import MeasurementRow
from collector.services.ooni import FetchError, Query, fetch
from tests.support.aiohttp_site import serve_app

CORPUS = Path(__file__).resolve().parents[2] / "data" / "ooni"


class StandIn:
    def __init__(self, documents: list[dict[str, Any]]) -> None:
        self.documents = documents
        self.base = ""
        self.failures: list[int] = []  # statuses to answer before the next success
        self.seen: list[str] = []

    def _fail(self) -> web.Response | None:
        if self.failures:
            return web.Response(status=self.failures.pop(0), headers={"Retry-After": "0"})
        return None

    async def listing(self, request: web.Request) -> web.Response:
        self.seen.append(request.path_qs)
        if (failed := self._fail()) is not None:
            return failed
        q = request.query
        rows = [
            d for d in self.documents
            if urlsplit(d["input"]).hostname == q.get("domain")
            and d["probe_cc"] == q.get("probe_cc")
            and d["test_name"] == q.get("test_name", d["test_name"])
            and d["measurement_start_time"][:10] > q["since"]
            and ("until" not in q or d["measurement_start_time"][:10] <= q["until"])
        ]  # fmt: skip
        rows.sort(key=lambda d: d["measurement_start_time"])
        offset, limit = int(q.get("offset", 0)), int(q.get("limit", 100))
        page = rows[offset : offset + limit]
        full = len(page) == limit
        next_url = (f"{self.base}/api/v1/measurements?" +
                    urlencode({**q, "offset": offset + limit})) if full else None  # fmt: skip
        results = [{
            "measurement_uid": d["measurement_uid"],
            "measurement_url": "https://elsewhere.example/api/v1/raw_measurement?measurement_uid="
            + d["measurement_uid"],
            "report_id": d["report_id"], "probe_cc": d["probe_cc"], "probe_asn": d["probe_asn"],
            "test_name": d["test_name"], "measurement_start_time": d["measurement_start_time"],
            "input": d["input"], "anomaly": bool(d["test_keys"].get("blocking")),
            "confirmed": False, "failure": False, "scores": {},
        } for d in page]  # fmt: skip
        metadata = {"offset": offset, "limit": limit, "count": -1 if full else offset + len(page),
                    "pages": -1, "current_page": offset // limit + 1, "next_url": next_url,
                    "query_time": 0.01}  # fmt: skip
        return web.json_response({"metadata": metadata, "results": results})

    async def raw(self, request: web.Request) -> web.Response:
        self.seen.append(request.path_qs)
        if (failed := self._fail()) is not None:
            return failed
        uid = request.query.get("measurement_uid")
        for d in self.documents:
            if d["measurement_uid"] == uid:
                return web.Response(text=json.dumps(d), content_type="application/json")
        return web.json_response({})


@pytest.fixture
def standin() -> Iterator[StandIn]:
    documents = [json.loads(line) for line in (CORPUS / "all_v05.jsonl").read_text().splitlines()]
    # Many measurements of one instance: several pages.
    template = next(d for d in documents if d["input"] == "https://mastodon.social/")
    for n in range(250):
        copy = json.loads(json.dumps(template))
        copy["measurement_uid"] = f"20260601{n:06d}.000000_CN_webconnectivity_{n:016x}"
        copy["measurement_start_time"] = f"2026-06-{1 + n % 28:02d} 10:{n % 60:02d}:00"
        documents.append(copy)
    server = StandIn(documents)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> tuple[web.AppRunner, int]:
        site = web.Application()
        site.router.add_get("/api/v1/measurements", server.listing)
        site.router.add_get("/api/v1/raw_measurement", server.raw)
        return await serve_app(site)

    runner, port = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    server.base = f"http://127.0.0.1:{port}"
    yield server
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def test_pages_are_followed_and_bodies_fetched_from_the_api_itself(standin: StandIn) -> None:
    query = Query(domain="mastodon.social", cc="CN", since="2026-05-31", limit=10_000)
    items = asyncio.run(fetch(standin.base, query))
    wanted = [d for d in standin.documents if urlsplit(d["input"]).hostname == "mastodon.social"
              and d["probe_cc"] == "CN"]  # fmt: skip
    assert len(items) == len(wanted) > 200
    assert all(i.error is None and i.measurement is not None for i in items)
    assert {i.measurement.measurement_uid for i in items if i.measurement} == {
        d["measurement_uid"] for d in wanted
    }
    listings = [s for s in standin.seen if s.startswith("/api/v1/measurements")]
    assert len(listings) == 3 and "offset=200" in listings[-1]
    # measurement_url pointed elsewhere: never followed.
    assert all(s.startswith("/api/v1/") for s in standin.seen)


def test_limit_until_and_retries(standin: StandIn) -> None:
    standin.failures = [503, 429]
    query = Query(domain="mastodon.social", cc="CN", since="2026-05-31", until="2026-06-03",
                  limit=5)  # fmt: skip
    items = asyncio.run(fetch(standin.base, query))
    assert len(items) == 5
    assert all(i.measurement and i.measurement.started_at.day <= 3 for i in items)
    standin.failures = [404]
    with pytest.raises(FetchError, match="HTTP 404"):
        asyncio.run(fetch(standin.base, query))


def test_the_command_imports_what_it_fetched(standin: StandIn, tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path}/c.db"
    runner = CliRunner()
    assert runner.invoke(app, ["targets", "add", "mastodon.social",
                               "--database-url", database]).exit_code == 0  # fmt: skip
    saved = tmp_path / "fetched.jsonl"
    command = [
        "ooni",
        "fetch",
        "--domain",
        "mastodon.social",
        "--cc",
        "CN",
        "--since",
        "2026-06-10",
        "--api",
        standin.base,
        "--save",
        str(saved),
        "--format",
        "jsonl",
    ]
    done = runner.invoke(app, [*command, "--database-url", database])
    assert done.exit_code == 0, done.output
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines and all(line["stored"] for line in lines)
    assert len(saved.read_text().splitlines()) == len(lines)
    engine = make_engine(database)
    with session_scope(make_session_factory(engine)) as s:
        assert s.scalar(select(func.count()).select_from(MeasurementRow)) == len(lines)
    engine.dispose()
    bad = runner.invoke(app, ["ooni", "fetch", "--domain", "x.example", "--cc", "China",
                              "--since", "2026-06-01", "--database-url", database])  # fmt: skip
    assert bad.exit_code == 2
