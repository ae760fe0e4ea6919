"""What watching the collector costs: one /metrics scrape and the pass's gauges.

A SQLite collector database with T targets, each with network states in C
countries (2 networks each), an open event for one target in ten, and P
probes reporting; then, side by side in one run, as T grows: the time the
detection pass spends setting the gauges (``Gauges.update``), the time to
render ``/metrics`` (``metrics.exposition``, what a scrape costs the
collector), the exposition's size and its number of series. Each figure is
the median of R repetitions.

    .venv/bin/python bench/bench_scrape.py [--targets 200 2000] [--countries 3] [--repeat 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from collector.core import metrics
from collector.core.db import make_engine, make_session_factory, migrate, session_scope
from collector.core.models import EventRow, NetworkStateRow, ProbeRow
from collector.core.settings import CollectorSettings, Mode
from collector.detection.gauges import Gauges
from collector.services.targets import TargetService

COUNTRIES = ["CN", "IR", "RU", "TM", "MM", "VN"]
STATES = ["ok", "blocked", "down", "unknown"]


def fill(url: str, targets: int, countries: int, probes: int, now: datetime) -> None:
    engine = make_engine(url)
    migrate(engine)
    sessions = make_session_factory(engine)
    domains = [f"instance{i}.example" for i in range(targets)]
    with session_scope(sessions) as s:
        TargetService().add(s, domains)
        for i, domain in enumerate(domains):
            for cc in COUNTRIES[:countries]:
                for asn in (4134, 4837):
                    s.add(NetworkStateRow(domain=domain, cc=cc, asn=asn, state=STATES[i % 4],
                                          since=now, probes=3, updated_at=now))  # fmt: skip
            if i % 10 == 0:
                s.add(EventRow(
                    domain=domain, cc="CN", state="open", scope="national", asns="[4134]",
                    methods='["dns", "tls"]', volunteers="[]", evidence="[]", started_at=now,
                    detected_at=now, updated_at=now, last_blocked_at=now, rule_version="b",
                    forged_pool_version="b",
                ))  # fmt: skip
        for p in range(probes):
            s.add(ProbeRow(
                id=f"p{p}", status="active", role="probe", last_cc=COUNTRIES[p % countries],
                last_asn=4134 + p % 2, last_checkin_at=now - timedelta(seconds=30),
            ))  # fmt: skip
    engine.dispose()


def measure(targets: int, countries: int, probes: int, repeat: int) -> dict[str, float]:
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="bench-scrape-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'collector.db'}"
        fill(url, targets, countries, probes, now)
        settings = CollectorSettings(database_url=url, mode=Mode.LAB, admin_token="b" * 32)
        engine = make_engine(url)
        sessions = make_session_factory(engine)
        gauges = Gauges(settings)
        updates, scrapes = [], []
        for _ in range(repeat):
            started = time.perf_counter()
            with session_scope(sessions) as s:
                gauges.update(s, now)
            updates.append(time.perf_counter() - started)
            started = time.perf_counter()
            body = metrics.exposition()
            scrapes.append(time.perf_counter() - started)
        engine.dispose()
    series = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))
    return {
        "targets": targets,
        "countries": countries,
        "gauges_update_ms": round(statistics.median(updates) * 1000, 2),
        "scrape_ms": round(statistics.median(scrapes) * 1000, 2),
        "exposition_kb": round(len(body) / 1024, 1),
        "series": series,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--targets", type=int, nargs="+", default=[200, 2000])
    parser.add_argument("--countries", type=int, default=3)
    parser.add_argument("--probes", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    rows = []
    for targets in args.targets:
        metrics.TARGET_STATE.clear()  # each size on its own series
        rows.append(measure(targets, args.countries, args.probes, args.repeat))
    base = rows[0]
    for row in rows:
        row["scrape_ratio"] = round(row["scrape_ms"] / base["scrape_ms"], 2)
        row["update_ratio"] = round(row["gauges_update_ms"] / base["gauges_update_ms"], 2)
        print(json.dumps(row))


if __name__ == "__main__":
    main()
