"""`reanalyse` on a history of measurement documents: its rate, and what 10M would take.

A collector database (SQLite, or PostgreSQL with ``--backend postgresql``)
holding N probe measurements: 1,000 instances, each on its own address, measured
every 5 minutes by 2 volunteers in each of 10 countries, with one control
measurement of each instance a round; real measurement documents (the shapes
the analysis tests build), and a stored verdict for each, of an older rule
version that differed from today's in three ways, so that the report has
events to show:

- 100 instances are blocked (forged DNS answer, SNI reset) in the even-numbered
  countries from a third of the history on: the old rules saw only ``tls``,
  today's ``dns,tls`` (the events *change*: their methods);
- 100 instances are down for a while in every country (the control fails too):
  the old rules called that ``tcp_ip`` (their events *close*: they were outages);
- 100 instances are blocked for 3 rounds in one country: the old rules saw
  nothing (``unknown``; the events *open*);
- the rest are reached (``ok`` both ways).

Then the real command, ``reanalyse --json`` (a dry run) and ``reanalyse --apply
--json`` (every verdict rewritten under the new rule version, the touched keys'
history replayed), at N and at a tenth of N in one run: the ratio says whether
the cost is linear, and the rate says what 10M rows would take.

    .venv/bin/python bench/bench_reanalyse.py [--rows 1000000] [--backend sqlite|postgresql]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, insert, text

from collector.core.db import make_engine, migrate
from collector.core.models import MeasurementRow, ProbeRow, VerdictRow, pack_payload
from tests.collector.analysis import builders as b

CHUNK = 10000
DOMAINS = 1000
COUNTRIES = 10
PROBES = 2  # volunteers a country
START = datetime(2026, 6, 1, tzinfo=UTC)
ROUND = timedelta(minutes=5)
OLD_RULES = "2026.11.1"


def _address(slot: int) -> str:
    return f"45.77.{slot // 250}.{slot % 250 + 1}"


def _document(kind: str, slot: int) -> str:
    """The measurement document of *kind* for the instance in *slot*, on its own address
    (the domain and the time are filled in per measurement)."""
    shapes = {"reached": b.reached, "blocked": b.sni_blocked, "down": b.failed_control,
              "control": b.control, "control_down": b.failed_control}  # fmt: skip
    return json.dumps(shapes[kind]()).replace(b.REAL_IP, _address(slot))


class History:
    """Which instance is in which state in which round, and what the old rules said."""

    def __init__(self, rounds: int) -> None:
        self.rounds = rounds

    def state(self, slot: int, country: int, round_: int) -> tuple[str, str, bool]:
        """(document kind, the old rules' flags, old blocked)."""
        r = self.rounds
        if slot % 10 == 0 and country % 2 == 0 and round_ >= r // 3:
            return "blocked", "tls", True
        if slot % 10 == 1 and r // 2 <= round_ < r // 2 + max(3, r // 10):
            return "down", "tcp_ip", True
        if slot % 10 == 2 and country == 1 and r // 4 <= round_ < r // 4 + 3:
            return "blocked", "unknown", False
        return "reached", "ok", False

    def control_down(self, slot: int, round_: int) -> bool:
        return self.state(slot, 1, round_)[0] == "down"


def fill(url: str, rows: int) -> float:
    started = time.perf_counter()
    engine = make_engine(url)
    migrate(engine)
    probes = [f"p{c}{v}" for c in range(COUNTRIES) for v in range(PROBES)]
    with engine.begin() as conn:
        conn.execute(insert(ProbeRow), [
            {"id": p, "status": "active", "role": "probe", "spool_depth": 0, "evicted_total": 0}
            for p in [*probes, "c1"]
        ])  # fmt: skip
    per_round = DOMAINS * COUNTRIES * PROBES
    history = History(max(1, rows // per_round))
    documents: dict[tuple[str, int], str] = {}

    def payload(kind: str, slot: int, domain: str, when: datetime, mid: str) -> bytes:
        template = documents.get((kind, slot))
        if template is None:
            template = documents[(kind, slot)] = _document(kind, slot)
        measurement = json.loads(template)
        measurement.update(domain=domain, started_at=when.isoformat().replace("+00:00", "Z"),
                           measurement_id=mid)  # fmt: skip
        return pack_payload(json.dumps({"measurement": measurement}).encode())

    pk = 0
    for start in range(0, rows, CHUNK):
        measurements: list[dict[str, Any]] = []
        verdicts: list[dict[str, Any]] = []
        for i in range(start, min(rows, start + CHUNK)):
            round_, rest = divmod(i, per_round)
            vantage, slot = divmod(rest, DOMAINS)
            country, volunteer = divmod(vantage, PROBES)
            domain = f"instance{slot:04d}.example"
            base = START + round_ * ROUND + timedelta(seconds=slot % 200)
            if vantage == 0:  # the round's control of this instance
                pk += 1
                down = history.control_down(slot, round_)
                at = base + timedelta(seconds=20)
                measurements.append({
                    "id": pk, "measurement_id": f"c{i}", "probe_id": "c1", "key_id": "kc",
                    "domain": domain, "started_at": at, "received_at": at, "cc": "ZZ",
                    "asn": 0, "network_source": "control", "role": "control", "hints": "[]",
                    "signature": b"s" * 64,
                    "payload": payload("control_down" if down else "control", slot, domain, at,
                                       f"c{i}"),
                })  # fmt: skip
            kind, old_flags, old_blocked = history.state(slot, country, round_)
            at = base + timedelta(seconds=volunteer)
            cc, probe = f"C{country}", f"p{country}{volunteer}"
            pk += 1
            measurements.append({
                "id": pk, "measurement_id": f"m{i}", "probe_id": probe, "key_id": f"k{probe}",
                "domain": domain, "started_at": at, "received_at": at, "cc": cc,
                "asn": 4134 + country, "network_source": "geolocated", "role": "probe",
                "hints": "[]", "signature": b"s" * 64,
                "payload": payload(kind, slot, domain, at, f"m{i}"),
            })  # fmt: skip
            verdicts.append({
                "measurement_pk": pk, "measurement_id": f"m{i}", "probe_id": probe,
                "domain": domain, "cc": cc, "asn": 4134 + country,
                "network_source": "geolocated", "started_at": at, "flags": old_flags,
                "blocked": old_blocked, "reasons": "[]", "triggers": "[]", "controls": "[]",
                "rule_version": OLD_RULES, "analyzed_at": at,
            })  # fmt: skip
        with engine.begin() as conn:
            conn.execute(insert(MeasurementRow), measurements)
            conn.execute(insert(VerdictRow), verdicts)
    engine.dispose()
    return time.perf_counter() - started


def reanalyse(url: str, *flags: str) -> tuple[float, dict[str, Any]]:
    cli = str(Path(sys.executable).parent / "blockwatch-collector")
    t = time.perf_counter()
    done = subprocess.run([cli, "reanalyse", "--json", *flags, "--database-url", url],
                          capture_output=True, text=True, check=True)  # fmt: skip
    summary: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    # The largest resident set of any run so far (runs are one at a time, largest last).
    summary["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
    return time.perf_counter() - t, summary


@contextmanager
def database(backend: str, tmp: str, name: str) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp}/{name}.db"
        return
    admin = create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
                          isolation_level="AUTOCOMMIT")  # fmt: skip
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        conn.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    args = parser.parse_args()
    sizes = [max(1, args.rows // 10), args.rows]
    with tempfile.TemporaryDirectory(prefix="bw-bench-reanalyse-") as tmp:
        seconds = {}
        for n in sizes:
            with database(args.backend, tmp, f"bw_bench_reanalyse_{n}") as url:
                print(json.dumps({"filled": n, "seconds": round(fill(url, n), 1)}), flush=True)
                dry, report = reanalyse(url)
                applied, written = reanalyse(url, "--apply")
                again, rerun = reanalyse(url, "--apply")
            seconds[n] = (dry, applied)
            print(json.dumps({
                "backend": args.backend, "rows": n,
                "dry_run_s": round(dry, 1), "rows_per_s": round(n / dry),
                "apply_s": round(applied, 1), "apply_rows_per_s": round(n / applied),
                "changed": report["changed"], "written": written["written"],
                "events": report["events"], "history": written["history"],
                "rerun_judged": rerun["judged"],
                "rerun_s": round(again, 1), "max_rss_mb": rerun["max_rss_mb"],
                "ten_million_dry_h": round(10_000_000 / (n / dry) / 3600, 2),
                "ten_million_apply_h": round(10_000_000 / (n / applied) / 3600, 2),
            }), flush=True)  # fmt: skip
        small, large = (seconds[n] for n in sizes)
        print(json.dumps({"linearity_dry": round(large[0] / small[0] / 10, 2),
                          "linearity_apply": round(large[1] / small[1] / 10, 2)}))  # fmt: skip


if __name__ == "__main__":
    main()
