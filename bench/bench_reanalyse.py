"""`reanalyse` on a history of measurement documents: its rate, and what 10M would take.

A SQLite collector database with N probe measurements of 1,000 instances in
10 countries: real measurement documents (the shapes the analysis tests build:
reached, SNI-blocked with a forged DNS answer, down), one control measurement
of each instance every 5 minutes, and a stored verdict for each measurement
under an older rule version. Then the real command, ``reanalyse --json``
(a dry run: every verdict judged again), and ``reanalyse --apply --json``
(every verdict rewritten), in one run, at N and a tenth of N (side by side:
the ratio says whether it is linear).

    .venv/bin/python bench/bench_reanalyse.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import insert

from collector.core.db import make_engine, migrate
from collector.core.models import MeasurementRow, ProbeRow, VerdictRow, pack_payload
from tests.collector.analysis import builders as b

CHUNK = 10000
DOMAINS = 1000
COUNTRIES = 10
START = datetime(2026, 6, 1, tzinfo=UTC)


def _payload(document: dict[str, object], domain: str, when: datetime) -> bytes:
    measurement = dict(document, domain=domain, started_at=when.isoformat().replace("+00:00", "Z"))
    return pack_payload(json.dumps({"measurement": measurement}).encode())


def fill(url: str, rows: int) -> float:
    started = time.perf_counter()
    engine = make_engine(url)
    migrate(engine)
    kinds = [b.reached(), b.sni_blocked(), b.failed_control()]
    with engine.begin() as conn:
        conn.execute(insert(ProbeRow), [
            {"id": "p1", "status": "active", "role": "probe", "spool_depth": 0, "evicted_total": 0},
            {"id": "c1", "status": "active", "role": "control", "spool_depth": 0,
             "evicted_total": 0},
        ])  # fmt: skip
    # One measurement of each instance by each country every round; the round's control.
    per_round = DOMAINS * COUNTRIES
    pk = 0
    for start in range(0, rows, CHUNK):
        measurements, verdicts = [], []
        for i in range(start, min(rows, start + CHUNK)):
            round_, slot = divmod(i, per_round)
            domain = f"instance{slot % DOMAINS:04d}.example"
            when = START + timedelta(minutes=5 * round_, seconds=slot % 60)
            if slot < DOMAINS:  # the round's controls, one per instance
                pk += 1
                measurements.append({
                    "id": pk, "measurement_id": f"c{i}", "probe_id": "c1", "key_id": "kc",
                    "domain": domain, "started_at": when + timedelta(seconds=20),
                    "received_at": when, "cc": "ZZ", "asn": 0, "network_source": "control",
                    "role": "control", "hints": "[]", "signature": b"s" * 64,
                    "payload": _payload(b.control(), domain, when + timedelta(seconds=20)),
                })  # fmt: skip
            pk += 1
            measurements.append({
                "id": pk, "measurement_id": f"m{i}", "probe_id": "p1", "key_id": "k",
                "domain": domain, "started_at": when, "received_at": when,
                "cc": f"C{slot // DOMAINS}", "asn": 4134, "network_source": "geolocated",
                "role": "probe", "hints": "[]", "signature": b"s" * 64,
                "payload": _payload(kinds[i % 3], domain, when),
            })  # fmt: skip
            verdicts.append({
                "measurement_pk": pk, "measurement_id": f"m{i}", "probe_id": "p1",
                "domain": domain, "cc": f"C{slot // DOMAINS}", "asn": 4134,
                "network_source": "geolocated", "started_at": when, "flags": "unknown",
                "blocked": False, "reasons": '["unknown.unexplained"]', "triggers": "[]",
                "controls": "[]", "rule_version": "2026.11.1", "analyzed_at": when,
            })  # fmt: skip
        with engine.begin() as conn:
            conn.execute(insert(MeasurementRow), measurements)
            conn.execute(insert(VerdictRow), verdicts)
    engine.dispose()
    return time.perf_counter() - started


def reanalyse(url: str, *flags: str) -> tuple[float, dict[str, object]]:
    cli = str(Path(sys.executable).parent / "blockwatch-collector")
    t = time.perf_counter()
    done = subprocess.run([cli, "reanalyse", "--json", *flags, "--database-url", url],
                          capture_output=True, text=True, check=True)  # fmt: skip
    summary: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return time.perf_counter() - t, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    sizes = [max(1, args.rows // 10), args.rows]
    with tempfile.TemporaryDirectory(prefix="bw-bench-reanalyse-") as tmp:
        seconds = {}
        for n in sizes:
            url = f"sqlite:///{tmp}/c{n}.db"
            print(json.dumps({"filled": n, "seconds": round(fill(url, n), 1)}), flush=True)
            dry, report = reanalyse(url)
            applied, written = reanalyse(url, "--apply")
            seconds[n] = dry
            print(json.dumps({
                "rows": n, "dry_run_s": round(dry, 1), "rows_per_s": round(n / dry),
                "apply_s": round(applied, 1), "apply_rows_per_s": round(n / applied),
                "changed": report["changed"], "written": written["written"],
                "ten_million_h": round(10_000_000 / (n / applied) / 3600, 2),
            }), flush=True)  # fmt: skip
        print(json.dumps({"linearity": round(seconds[sizes[1]] / seconds[sizes[0]] / 10, 2)}))


if __name__ == "__main__":
    main()
