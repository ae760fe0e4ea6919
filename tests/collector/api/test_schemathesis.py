"""Property-based API fuzzing from the OpenAPI document: no request may yield a 5xx.

A bounded run (hypothesis ``max_examples`` per operation) against the real app on
SQLite, lifespan started, with valid and invalid admin tokens. Every answer must
be below 500 and, when an error, carry ``{"error": {"code": "err_..."}}``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from collector.api.app import create_app
from collector.core.settings import CollectorSettings, Mode
from tests.collector.conftest import CLIENT_IP, FakeClock, FakeGeolocator
from tests.collector.helpers import ADMIN, ADMIN_TOKEN

pytestmark = pytest.mark.integration


def _app(tmp_path: Path) -> TestClient:
    config = CollectorSettings(
        database_url=f"sqlite:///{tmp_path}/fuzz.db",
        mode=Mode.LAB,
        admin_token=ADMIN_TOKEN,
        open_enrollment=True,
        probe_rate_limit=0,
    )
    app = create_app(config, geolocator=FakeGeolocator(), clock=FakeClock())
    return TestClient(app, client=(CLIENT_IP, 40000))


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    with _app(tmp_path_factory.mktemp("fuzz")) as client:
        yield client


def test_no_request_yields_a_5xx(running: TestClient) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", running.app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9  # every public route is fuzzed
    seen: dict[str, int] = {}

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def check(case: schemathesis.Case) -> None:
            for headers in (ADMIN, {"Authorization": "Bearer nope"}):
                response = case.call(headers=headers)
                label = f"{case.method} {case.path}"
                seen[label] = seen.get(label, 0) + 1
                assert response.status_code < 500, (label, response.text[:500])
                if response.status_code >= 400:
                    body = json.loads(response.content)
                    assert body["error"]["code"].startswith("err_"), body

        check()
    assert len(seen) == len(operations)
