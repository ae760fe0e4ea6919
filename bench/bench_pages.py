"""The pages' weight and server time at 1,000 targets x 10 countries (issue 17's goal:
the overview under 100 KB transferred, compressed, and under 100 ms server time).

A SQLite collector database with T targets, each measured in C countries (two
networks each), one open event in ten, then the app in this process (no
network): the median server time of R requests for each page, its size as
sent and gzip-compressed (level 6, what Caddy's ``encode gzip`` and most
proxies do). Side by side in one run, a tenth of the targets for the ratio.

    .venv/bin/python bench/bench_pages.py [--targets 100 1000] [--countries 10] [--repeat 20]
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fastapi.testclient import TestClient

from collector.api.app import create_app
from collector.core.db import make_engine, make_session_factory, migrate, session_scope
from collector.core.models import EventRow, NetworkStateRow
from collector.core.settings import CollectorSettings, Mode
from collector.services.targets import TargetService

COUNTRIES = ["CN", "IR", "RU", "TM", "MM", "VN", "PK", "EG", "TR", "BY", "SA", "AE"]
STATES = ["ok", "ok", "ok", "blocked", "down", "unknown"]


def fill(url: str, targets: int, countries: int) -> None:
    engine = make_engine(url)
    migrate(engine)
    now = datetime.now(UTC)
    with session_scope(make_session_factory(engine)) as s:
        domains = [f"instance{i:05d}.example" for i in range(targets)]
        TargetService().add(s, domains)
        for i, domain in enumerate(domains):
            for j, cc in enumerate(COUNTRIES[:countries]):
                for asn in (4134, 4837):
                    s.add(NetworkStateRow(domain=domain, cc=cc, asn=asn,
                                          state=STATES[(i + j) % len(STATES)],
                                          since=now - timedelta(hours=3), probes=5,
                                          updated_at=now))  # fmt: skip
            if i % 10 == 0:
                s.add(EventRow(
                    domain=domain, cc="CN", state="open", scope="national", asns="[4134]",
                    methods='["dns", "tls"]', volunteers="[]", evidence="[]",
                    started_at=now - timedelta(days=2), detected_at=now - timedelta(days=2),
                    updated_at=now, last_blocked_at=now, rule_version="b",
                    forged_pool_version="b",
                ))  # fmt: skip
    engine.dispose()


def measure(targets: int, countries: int, repeat: int) -> list[dict[str, object]]:
    with tempfile.TemporaryDirectory(prefix="bench-pages-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'collector.db'}"
        fill(url, targets, countries)
        settings = CollectorSettings(database_url=url, mode=Mode.LAB, admin_token="b" * 32,
                                     detector=False, publish_min_volunteers=3)  # fmt: skip
        rows: list[dict[str, object]] = []
        with TestClient(create_app(settings)) as client:
            for path in ("/", "/?page=10", "/i/instance00000.example", "/events", "/coverage"):
                times = []
                body = b""
                for _ in range(repeat):
                    started = time.perf_counter()
                    answer = client.get(path, headers={"Accept-Encoding": "identity"})
                    times.append(time.perf_counter() - started)
                    assert answer.status_code == 200, (path, answer.status_code)
                    body = answer.content
                rows.append({
                    "targets": targets, "countries": countries, "page": path,
                    "server_ms": round(statistics.median(times) * 1000, 1),
                    "kb": round(len(body) / 1024, 1),
                    "gzip_kb": round(len(gzip.compress(body, 6)) / 1024, 1),
                })  # fmt: skip
        return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--targets", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--countries", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    results = [r for t in args.targets for r in measure(t, args.countries, args.repeat)]
    base = {r["page"]: r for r in results if r["targets"] == args.targets[0]}
    for row in results:
        first = base[row["page"]]
        row["server_ratio"] = round(float(row["server_ms"]) / float(first["server_ms"]), 2)  # type: ignore[arg-type]
        print(json.dumps(row))


if __name__ == "__main__":
    main()
