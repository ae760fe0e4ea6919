"""deploy/compose.yaml holds together: valid against the Compose Specification,
rendered by podman-compose, and everything it names exists (the images built
here, the files it mounts, the variables of .env.example, the ports the images
serve on, the settings the collector reads), upstream images pinned by tag."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from collector.core.settings import CollectorSettings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / ".env.example"
SCHEMA = Path(__file__).parent / "data" / "compose-spec.json"
GUIDE = ROOT / "docs" / "operator-guide.md"


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return document


def example_env() -> dict[str, str]:
    pairs = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            pairs[name] = value or f"test-{name.lower()}"
    return pairs


def test_it_is_valid_against_the_compose_specification() -> None:
    validator = jsonschema.Draft201909Validator(json.loads(SCHEMA.read_text()))
    assert [e.message for e in validator.iter_errors(compose())] == []
    # The schema is strict enough to catch a misspelt key.
    broken = compose()
    broken["services"]["collector-1"]["helthcheck"] = {}
    assert list(validator.iter_errors(broken))


def test_podman_compose_renders_it_with_the_example_env(tmp_path: Path) -> None:
    tool = shutil.which("podman-compose") or str(Path(sys.executable).parent / "podman-compose")
    env = tmp_path / ".env"
    env.write_text("".join(f"{k}={v}\n" for k, v in example_env().items()))
    result = subprocess.run(
        [tool, "--env-file", str(env), "-f", str(COMPOSE), "config"],
        capture_output=True, text=True, timeout=60, cwd=DEPLOY,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)
    assert {"collector-1", "collector-2", "postgres", "migrate", "caddy", "prometheus",
            "alertmanager", "grafana"} <= set(rendered["services"])  # fmt: skip
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    one = rendered["services"]["collector-1"]
    assert one["image"] == f"localhost/blockwatch-collector:{version}"
    assert (
        one["environment"]["BLOCKWATCH_PUBLIC_URL"]
        == "https://" + example_env()["BLOCKWATCH_DOMAIN"]
    )


def test_every_variable_it_reads_is_in_the_example_and_the_reverse() -> None:
    text = COMPOSE.read_text()
    used = set(re.findall(r"\$\{(\w+)", text))
    assert used == set(example_env()), (used, set(example_env()))
    # The collector's variables are settings it really reads.
    known = {"BLOCKWATCH_" + name.upper() for name in CollectorSettings.model_fields}
    collector_env = compose()["x-collector"]["environment"]
    assert set(collector_env) <= known, set(collector_env) - known


def test_every_file_image_and_port_it_names_exists() -> None:
    document = compose()
    for name, service in document["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), f"{name} mounts {source}, which is missing"
            else:
                assert source in document["volumes"], f"{name}: undeclared volume {source}"
        image = service["image"]
        if image.startswith("localhost/blockwatch-"):
            kind = image.split("blockwatch-", 1)[1].split(":", 1)[0]
            assert (DEPLOY / kind / "Containerfile").exists(), image  # built by make image
        else:
            tag = image.rsplit(":", 1)[1]
            assert re.search(r"\d", tag) and tag != "latest", f"{image} is not pinned"
            assert f"`{image}`" in GUIDE.read_text(), f"{image} is not in the operator guide"
    # Secrets are the operator's files: each one documented where they are made.
    readme = (DEPLOY / "secrets" / "README.md").read_text()
    for secret in document["secrets"].values():
        assert Path(secret["file"]).name in readme
    # The collector serves where the proxy and Prometheus look for it.
    exposed = re.findall(r"^EXPOSE (\d+)", (DEPLOY / "collector/Containerfile").read_text(), re.M)
    assert exposed == ["8080"]
    replicas = sorted(n for n in document["services"] if n.startswith("collector-"))
    assert len(replicas) >= 2
    caddy = (DEPLOY / "caddy" / "Caddyfile").read_text()
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    [job] = [j for j in prometheus["scrape_configs"] if j["job_name"] == "blockwatch"]
    assert job["static_configs"][0]["targets"] == [f"{r}:8080" for r in replicas]
    assert all(f"{r}:8080" in caddy for r in replicas)
    assert job["authorization"]["credentials_file"] == "/run/secrets/metrics_token"
    assert "metrics_token" in document["services"]["prometheus"]["secrets"]
    # Caddy's fixed address is the one proxy the collector believes.
    address = document["services"]["caddy"]["networks"]["blockwatch"]["ipv4_address"]
    assert document["x-collector"]["environment"]["BLOCKWATCH_TRUSTED_PROXIES"] == f"{address}/32"


def test_promtool_checks_the_scrape_configuration(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian: prometheus)")
    token = tmp_path / "metrics_token"
    token.write_text("test-token\n")
    config = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    (tmp_path / "prometheus.yml").write_text(
        config.replace("/run/secrets/metrics_token", str(token))
    )
    shutil.copy(DEPLOY / "prometheus" / "blockwatch.rules.yml", tmp_path)
    result = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def _handlers(node: Any) -> list[dict[str, Any]]:
    """Every handler in Caddy's adapted JSON, however deeply its routes nest."""
    found = []
    if isinstance(node, dict):
        if "handler" in node:
            found.append(node)
        for value in node.values():
            found += _handlers(value)
    elif isinstance(node, list):
        for value in node:
            found += _handlers(value)
    return found


def test_caddy_adapts_the_caddyfile_to_both_ready_replicas() -> None:
    caddy = shutil.which("caddy")
    if caddy is None:
        pytest.skip("caddy is not installed (Debian: caddy)")
    # `adapt` parses and converts, and starts nothing: no health check, no ACME, no
    # packet (`validate` would provision the proxy and resolve its upstreams).
    result = subprocess.run(
        [caddy, "adapt", "--adapter", "caddyfile", "--config", str(DEPLOY / "caddy/Caddyfile")],
        capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "BLOCKWATCH_DOMAIN": "bw.example.org"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    [proxy] = [h for h in _handlers(config) if h["handler"] == "reverse_proxy"]
    replicas = sorted(n for n in compose()["services"] if n.startswith("collector-"))
    assert [u["dial"] for u in proxy["upstreams"]] == [f"{r}:8080" for r in replicas]
    assert proxy["health_checks"]["active"]["uri"] == "/readyz"
    assert "bw.example.org" in result.stdout  # the site is the operator's domain
