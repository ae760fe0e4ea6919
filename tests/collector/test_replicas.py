"""Two collector replicas on one PostgreSQL, for real (issue 16).

Both processes start at once on an empty database (the migration's advisory
lock lets one migrate while the other waits), both ingest, exactly one holds
the ``singletons`` lease and runs the detector (sampled from each replica's
``blockwatch_lease_held`` all along), kill -9 of the holder hands the lease to
the other within its lifetime (measured), and across the handover the block
gives one event and one alert per change, never two.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from collector.services import health
from tests.collector.alerts.test_outbox_processes import SlowReceiver, wait_for
from tests.collector.analysis import builders as b
from tests.collector.conftest import TEST_SECRET_KEY, scratch_database
from tests.collector.helpers import ADMIN, TestProbe, rfc3339
from tests.collector.serving import ServedCollector

pytestmark = pytest.mark.integration
DOMAIN = b.DOMAIN
DETECT_INTERVAL = 0.5  # the lease lives max(10 s, 3 intervals): 10 s
SERVE = ["--no-control", "--webhook-allow-private", "--detect-interval", f"{DETECT_INTERVAL}s",
         "--measure-interval", "20s"]  # fmt: skip
ENV = {
    "BLOCKWATCH_ALERT_INTERVAL": "0.2",
    "BLOCKWATCH_SECRET_KEY": TEST_SECRET_KEY,
    "BLOCKWATCH_WEBHOOK_ALLOWLIST": "127.0.0.0/8",
}


@pytest.fixture
def empty_database() -> Iterator[str]:
    """A database of its own, without a schema: both replicas migrate it at once."""
    try:
        scratch = scratch_database("bw_replicas")
        url = scratch.__enter__()
    except Exception as exc:
        pytest.skip(f"PostgreSQL is not available: {exc}")
    yield url
    scratch.__exit__(None, None, None)


def held(replica: ServedCollector) -> tuple[float, float] | None:
    """(lease held, detector passes) from the replica's /metrics; None if it is gone."""
    try:
        answer = httpx.get(replica.url + "/metrics", headers=ADMIN, timeout=2)
    except httpx.HTTPError:
        return None
    lease = passes = 0.0
    for line in answer.text.splitlines():
        if line.startswith('blockwatch_lease_held{lease="singletons"'):
            lease = float(line.rsplit(" ", 1)[1])
        elif line.startswith("blockwatch_detector_pass_seconds_count"):
            passes = float(line.rsplit(" ", 1)[1])
    return lease, passes


class Sampler(threading.Thread):
    """Every 0.1 s, who holds the lease and how many passes each replica ran."""

    def __init__(self, replicas: list[ServedCollector]) -> None:
        super().__init__(daemon=True)
        self.replicas = replicas
        self.samples: list[tuple[float, list[tuple[float, float] | None]]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.samples.append((time.monotonic(), [held(r) for r in self.replicas]))
            time.sleep(0.1)

    def holders(self, since: float = 0.0) -> set[int]:
        return {
            i
            for at, row in self.samples
            if at >= since
            for i, s in enumerate(row)
            if s is not None and s[0] == 1
        }


class Network:
    """Three vouched probes and a control vantage, submitting to either replica."""

    def __init__(self, replicas: list[ServedCollector]) -> None:
        self.replicas = replicas
        self.probes = [TestProbe(declared={"cc": "CN", "asn": 4134}) for _ in range(3)]
        self.control = TestProbe()
        for i, probe in enumerate(self.probes):
            self._enroll(i, probe, {"cc": "CN", "asn": 4134})
        self._enroll(0, self.control, {"role": "control"}, role="control")
        self.sent = 0

    def _enroll(self, i: int, probe: TestProbe, body: dict[str, Any], role: str = "probe") -> None:
        replica = self.replicas[i % len(self.replicas)]
        answer = httpx.post(replica.url + "/api/v1/probes/tokens", json=body, headers=ADMIN)
        assert answer.status_code == 201, answer.text
        enrolled = httpx.post(
            replica.url + "/api/v1/probes/enroll",
            json=probe.enroll(answer.json()["token"], role=role),
        )
        assert enrolled.status_code == 201, enrolled.text

    def submit(self, replica: ServedCollector, probe: TestProbe, m: dict[str, Any]) -> None:
        now = datetime.now(UTC)
        body = dict(m, measurement_id=str(uuid.uuid4()), started_at=rfc3339(now))
        answer = httpx.post(
            replica.url + "/api/v1/measurements",
            json={"measurements": [probe.measure(body, at=now)]},
            timeout=10,
        )
        assert answer.status_code == 200 and answer.json()["accepted"] == 1, answer.text
        self.sent += 1

    def round(self, m: dict[str, Any], live: list[ServedCollector]) -> None:
        """Every probe measures, spread over the live replicas; then the control."""
        for i, probe in enumerate(self.probes):
            self.submit(live[i % len(live)], probe, m)
        time.sleep(0.05)
        self.submit(live[-1], self.control, b.control())


def events(replica: ServedCollector) -> list[dict[str, Any]]:
    answer = httpx.get(replica.url + "/api/v1/events?limit=100", headers=ADMIN, timeout=5)
    data: list[dict[str, Any]] = answer.json()["data"]
    return data


@pytest.mark.timeout(300)
def test_two_replicas_one_lease_failover_and_no_double_event_or_alert(
    empty_database: str, tmp_path: Path
) -> None:
    replicas = [
        ServedCollector(empty_database, tmp_path / f"{n}.log", SERVE, ENV) for n in ("a", "b")
    ]
    for replica in replicas:
        replica.launch()  # at once: both migrate the empty database
    sampler = Sampler(replicas)
    with SlowReceiver() as receiver:
        try:
            for replica in replicas:
                replica.wait_ready()
            engine = create_engine(empty_database)
            with engine.connect() as conn:
                revision = conn.execute(text("SELECT version_num FROM alembic_version")).all()
            engine.dispose()
            assert revision == [
                (health._known_revisions()[-1],)
            ]  # one row: migrated once, not twice
            a, b_ = replicas
            assert httpx.post(a.url + "/api/v1/targets", json={"domains": [DOMAIN]},
                              headers=ADMIN).status_code == 201  # fmt: skip
            subscribed = httpx.post(
                b_.url + "/api/v1/subscriptions",
                json={"domain": DOMAIN, "channel": "webhook", "url": receiver.url},
                headers=ADMIN,
            )
            assert subscribed.status_code == 201, subscribed.text
            network = Network(replicas)
            sampler.start()

            network.round(b.reached(), replicas)
            network.round(b.sni_blocked(), replicas)
            assert wait_for(lambda: [e["state"] for e in events(a)] == ["open"], 30), events(a)
            assert wait_for(lambda: len(receiver.ids) == 1, 20), receiver.ids

            # Kill -9 the lease holder; the other takes the lease over.
            assert wait_for(lambda: len(sampler.holders(time.monotonic() - 0.5)) == 1, 10)
            [holder] = sampler.holders(time.monotonic() - 0.5)
            survivor = replicas[1 - holder]
            killed_at = time.monotonic()
            replicas[holder].kill9()
            assert wait_for(lambda: sampler.holders(killed_at) == {1 - holder}, 30)
            taken = [
                at
                for at, row in sampler.samples
                if at >= killed_at and (s := row[1 - holder]) is not None and s[0] == 1
            ]
            failover = min(taken) - killed_at

            # The block goes on, then lifts: measured by the survivor alone.
            network.round(b.sni_blocked(), [survivor])
            network.round(b.reached(), [survivor])
            assert wait_for(lambda: [e["state"] for e in events(survivor)] == ["closed"], 40), (
                events(survivor)
            )
            assert wait_for(lambda: len(receiver.ids) >= 2, 20), receiver.ids
            time.sleep(3 * DETECT_INTERVAL + 1)  # time for a second alert, if one would come
            final = events(survivor)
        finally:
            sampler.done.set()
            for replica in replicas:
                replica.stop()
    # Exactly one holder at any moment, and only the holder ran passes.
    for _at, row in sampler.samples:
        assert sum(1 for s in row if s is not None and s[0] == 1) <= 1, row
    for i in range(2):
        runs = [s[1] for _at, row in sampler.samples if (s := row[i]) is not None and s[0] == 0]
        assert len(set(runs)) <= 1, f"replica {i} ran passes without the lease"
    # One event, one alert per change (opened, closed), each delivered once.
    assert [e["state"] for e in final] == ["closed"], final
    assert len(receiver.ids) == len(set(receiver.ids)) == 2, receiver.ids
    assert failover <= 10 + 3 * DETECT_INTERVAL + 1, failover  # the lease's lifetime, a pass
    figures = {"failover_s": round(failover, 2), "samples": len(sampler.samples),
               "measurements": network.sent}  # fmt: skip
    (tmp_path / "replicas.json").write_text(json.dumps(figures))
    print(f"\nreplicas: lease failover after kill -9 in {failover:.2f} s ({figures})")
