"""The collector as a process: durability under kill -9, no address kept, no 5xx."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, text

from collector.core.db import alembic_config
from tests.collector.helpers import ADMIN, TestProbe
from tests.collector.serving import COLLECTOR, ServedCollector, free_port

METRICS_TOKEN = "metrics-" + "m" * 32

pytestmark = pytest.mark.integration


@pytest.fixture
def served(database_url: str, tmp_path: Path) -> Iterator[ServedCollector]:
    # These tests send a hundred measurements of one target within a minute: over the
    # default quota (4 per target + 32 an interval), which is tested on its own.
    collector = ServedCollector(
        database_url, tmp_path / "collector.log", env={"BLOCKWATCH_MEASUREMENT_QUOTA": "100000"}
    ).start()
    yield collector
    collector.stop()


def enrolled_probe(base: str, transport: httpx.HTTPTransport | None = None) -> TestProbe:
    with httpx.Client(base_url=base, transport=transport) as http:
        # What the probe measures must be a target (a second call changes nothing).
        http.post("/api/v1/targets", json={"domains": ["alive.bar"]}, headers=ADMIN)
        token = http.post("/api/v1/probes/tokens", json={}, headers=ADMIN).json()["token"]
        probe = TestProbe()
        answer = http.post("/api/v1/probes/enroll", json=probe.enroll(token=token))
        assert answer.status_code == 201, answer.text
    return probe


def count_measurements(database_url: str) -> int:
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        n = conn.execute(text("SELECT count(*) FROM measurements")).scalar_one()
    engine.dispose()
    return int(n)


def test_acknowledged_measurements_survive_kill_9(served: ServedCollector) -> None:
    probe = enrolled_probe(served.url)
    acknowledged = 0
    with httpx.Client(base_url=served.url) as http:
        for _ in range(5):
            batch = [probe.measure() for _ in range(20)]
            answer = http.post("/api/v1/measurements", json={"measurements": batch})
            acknowledged += answer.json()["accepted"]
    # The last answer has just arrived: kill the collector without a chance to flush.
    served.kill9()
    assert acknowledged == 100
    assert count_measurements(served.database_url) == acknowledged
    # And it comes back with everything, answering resubmissions as duplicates.
    served.start()
    with httpx.Client(base_url=served.url) as http:
        again = http.post("/api/v1/measurements", json={"measurements": [probe.measure()]})
        assert again.json()["accepted"] == 1


def test_the_submitters_address_is_kept_nowhere(
    served: ServedCollector, database_url: str, tmp_path: Path
) -> None:
    # Requests from a distinctive source address (loopback 127.0.0.0/8 holds any).
    source = "127.77.88.99"
    transport = httpx.HTTPTransport(local_address=source)
    probe = enrolled_probe(served.url, transport)
    with httpx.Client(base_url=served.url, transport=transport) as http:
        checkin = http.post("/api/v1/probes/checkin", json=probe.checkin())
        assert checkin.status_code == 200
        # Echoed to the probe once, in seen_address (so that it can scrub it), nowhere else.
        echoed = checkin.json()
        assert echoed.pop("seen_address") == source and source not in json.dumps(echoed)
        answer = http.post("/api/v1/measurements", json={"measurements": [probe.measure()]})
        assert source not in answer.text
        http.post("/api/v1/measurements", json={"measurements": ["junk"]})  # a rejection too
    served.stop()
    haystacks = [served.log.read_bytes()]
    if database_url.startswith("sqlite"):
        db = Path(database_url.removeprefix("sqlite:///"))
        haystacks += [p.read_bytes() for p in db.parent.glob(db.name + "*")]
    else:
        dump = subprocess.run(
            ["pg_dump", "--data-only", database_url.replace("+psycopg", "")],
            capture_output=True,
            check=True,
        )
        haystacks.append(dump.stdout)
    for needle in (source.encode(), source.replace(".", "-").encode()):
        assert all(needle not in hay for hay in haystacks)
    assert haystacks[0]  # the log is not empty: the search means something


def test_refuses_a_placeholder_admin_token(tmp_path: Path) -> None:
    for token in ("changeme", "short"):
        result = subprocess.run(
            [
                COLLECTOR,
                "serve",
                "--database-url",
                f"sqlite:///{tmp_path}/x.db",
                "--admin-token",
                token,
                "--port",
                "1",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": "/usr/bin:/bin"},
        )
        assert result.returncode == 2
        assert "refusing to start" in result.stderr


def test_migrate_command(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/m.db"
    for _ in range(2):  # idempotent
        result = subprocess.run(
            [COLLECTOR, "migrate", "--database-url", url],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
    engine = create_engine(url)
    with engine.connect() as conn:
        version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    engine.dispose()
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    assert [version] == heads  # the newest migration


def test_several_worker_processes_share_the_database_and_metrics(
    database_url: str, tmp_path: Path
) -> None:
    metrics_port = free_port()
    served = ServedCollector(
        database_url,
        tmp_path / "workers.log",
        extra=["--workers", "2", "--metrics-port", str(metrics_port)],
        env={"BLOCKWATCH_METRICS_TOKEN": METRICS_TOKEN},
    )
    served.start()
    try:
        probe = enrolled_probe(served.url)
        added = httpx.post(
            served.url + "/api/v1/targets", json={"domains": ["alive.bar"]}, headers=ADMIN
        )
        assert added.status_code == 201, added.text  # what the probe measures is a target
        accepted = 0
        for _ in range(6):  # new connections: the kernel spreads them over the workers
            with httpx.Client(base_url=served.url) as http:
                answer = http.post(
                    "/api/v1/measurements", json={"measurements": [probe.measure(), "junk"]}
                )
                accepted += answer.json()["accepted"]
        assert accepted == 6
        assert httpx.get(served.url + "/metrics").status_code == 401  # a token, or nothing
        scrapes = [
            httpx.get(served.url + "/metrics", headers=bearer).text
            for bearer in (ADMIN, {"Authorization": f"Bearer {METRICS_TOKEN}"})
        ]
        # ... and the private listener, run by the parent, which serves no request itself.
        scrapes.append(httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text)
        for metrics in scrapes:
            # Whichever process answers the scrape reports every worker's counts.
            assert 'blockwatch_measurements_total{status="accepted"} 6.0' in metrics
            assert 'blockwatch_rejections_total{reason="malformed_envelope"} 6.0' in metrics
    finally:
        served.stop()
    assert count_measurements(database_url) == 6
    assert served.log.read_text().count("Started server process") == 2  # really two
