"""Targets over the API: add, group, list, remove; errors."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.collector.helpers import ADMIN, error_code


def test_add_group_list_remove(client: TestClient) -> None:
    added = client.post(
        "/api/v1/targets",
        headers=ADMIN,
        json={"domains": ["alive.bar", "例子.测试"], "group": "alive"},
    )
    assert added.status_code == 201
    client.post(
        "/api/v1/targets",
        headers=ADMIN,
        json={"domains": ["alive-mirror.example"], "group": "alive", "kind": "mirror"},
    )
    listing = client.get("/api/v1/targets").json()
    assert listing["count"] == 3
    assert {t["domain"]: (t["group"], t["kind"]) for t in listing["data"]} == {
        "alive.bar": ("alive", "primary"),
        "xn--fsqu00a.xn--0zwm56d": ("alive", "primary"),
        "alive-mirror.example": ("alive", "mirror"),
    }
    assert client.delete("/api/v1/targets/alive.bar", headers=ADMIN).status_code == 204
    missing = client.delete("/api/v1/targets/alive.bar", headers=ADMIN)
    assert (missing.status_code, error_code(missing)) == (404, "err_not_found")


def test_invalid_domain_adds_nothing(client: TestClient) -> None:
    answer = client.post(
        "/api/v1/targets", headers=ADMIN, json={"domains": ["ok.example", "bad_name!.example"]}
    )
    assert (answer.status_code, error_code(answer)) == (422, "err_invalid_domain")
    assert client.get("/api/v1/targets").json()["count"] == 0


def test_validation_and_routing_errors(client: TestClient) -> None:
    empty = client.post("/api/v1/targets", headers=ADMIN, json={"domains": []})
    assert (empty.status_code, error_code(empty)) == (422, "err_validation")
    unknown = client.get("/api/v1/nothing-here")
    assert (unknown.status_code, error_code(unknown)) == (404, "err_not_found")
    wrong_method = client.put("/api/v1/targets")
    assert (wrong_method.status_code, error_code(wrong_method)) == (405, "err_method_not_allowed")
