"""`blockwatch-collector export` on a million rows: rate, and memory that does not grow.

A SQLite collector database with N verdicts (and their measurements), then the
real command line, ``export --what verdicts --full --format F -o FILE``, in a
child process per run: its wall time and peak resident memory (the child's
``ru_maxrss``). Side by side in one run: N and a tenth of N, so that "constant
memory" reads as the ratio of the two peaks (goal: about 1).

    .venv/bin/python bench/bench_export.py [--rows 1000000] [--formats jsonl csv parquet]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import insert

from collector.core.db import make_engine, migrate
from collector.core.models import MeasurementRow, ProbeRow, VerdictRow, pack_payload

CHUNK = 20000
PAYLOAD = pack_payload(b'{"measurement":{"domain":"instance.example"}}' * 20)


def fill(url: str, rows: int) -> float:
    """*rows* verdicts of 1,000 domains, 10 countries; seconds it took."""
    started = time.perf_counter()
    engine = make_engine(url)
    migrate(engine)
    t0 = datetime(2026, 6, 1, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(insert(ProbeRow).values(id="p1", status="active", role="probe",
                                             spool_depth=0, evicted_total=0))  # fmt: skip
    for start in range(0, rows, CHUNK):
        n = range(start, min(rows, start + CHUNK))
        with engine.begin() as conn:
            conn.execute(insert(MeasurementRow), [{
                "id": i + 1, "measurement_id": f"m{i}", "probe_id": "p1", "key_id": "k",
                "domain": f"instance{i % 1000:04d}.example",
                "started_at": t0 + timedelta(seconds=i), "received_at": t0 + timedelta(seconds=i),
                "cc": f"C{i % 10}", "asn": 4134 + i % 7, "network_source": "geolocated",
                "role": "probe", "hints": "[]", "payload": PAYLOAD, "signature": b"s" * 64,
            } for i in n])  # fmt: skip
            conn.execute(insert(VerdictRow), [{
                "measurement_pk": i + 1, "measurement_id": f"m{i}", "probe_id": "p1",
                "domain": f"instance{i % 1000:04d}.example", "cc": f"C{i % 10}",
                "asn": 4134 + i % 7, "network_source": "geolocated",
                "started_at": t0 + timedelta(seconds=i), "flags": "dns,tls" if i % 9 else "ok",
                "blocked": bool(i % 9), "reasons": '["dns.forged_ip","tls.sni_filter"]',
                "triggers": "[]", "controls": "[]", "rule_version": "2026.12.2",
                "analyzed_at": t0 + timedelta(seconds=i),
            } for i in n])  # fmt: skip
    engine.dispose()
    return time.perf_counter() - started


def run_export(url: str, fmt: str, out: Path) -> dict[str, float]:
    """The command in a child of a child: the peak memory is that export's alone."""
    cli = str(Path(sys.executable).parent / "blockwatch-collector")
    code = (
        "import resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        "subprocess.run(sys.argv[1:], check=True, stderr=subprocess.DEVNULL)\n"
        "wall = time.perf_counter() - t\n"
        "kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        "print(wall, kb)\n"
    )
    args = [cli, "export", "--what", "verdicts", "--full", "--format", fmt, "-o", str(out),
            "--database-url", url]  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          check=True)  # fmt: skip
    wall, kb = done.stdout.split()
    return {"seconds": float(wall), "peak_mb": int(kb) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--formats", nargs="+", default=["jsonl", "csv", "parquet"])
    args = parser.parse_args()
    sizes = [max(1, args.rows // 10), args.rows]
    with tempfile.TemporaryDirectory(prefix="bw-bench-export-") as tmp:
        urls = {}
        for n in sizes:
            urls[n] = f"sqlite:///{tmp}/c{n}.db"
            took = fill(urls[n], n)
            print(json.dumps({"filled": n, "seconds": round(took, 1)}), flush=True)
        for fmt in args.formats:
            results = {}
            for n in sizes:
                out = Path(tmp) / f"out{n}.{fmt}"
                results[n] = run_export(urls[n], fmt, out)
                results[n]["bytes"] = os.path.getsize(out)
                out.unlink()
            small, large = results[sizes[0]], results[sizes[1]]
            print(json.dumps({
                "format": fmt, "rows": sizes[1],
                "rows_per_s": round(sizes[1] / large["seconds"]),
                "peak_mb": round(large["peak_mb"], 1),
                "peak_mb_at_a_tenth": round(small["peak_mb"], 1),
                "memory_ratio": round(large["peak_mb"] / small["peak_mb"], 2),
                "mb_written": round(large["bytes"] / 1e6, 1),
            }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
