"""`blockwatch-collector serve`'s options: each flag and its variable reach the settings.

OPTIONS below was written down from the hand-written ``serve`` signature before its
options were derived from ``CollectorSettings``: every row is an option that existed
then, so a row that fails means an option (or its variable) was lost.
uvicorn is replaced by a recorder: nothing listens, nothing is sent.
"""

from __future__ import annotations

import gc
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import collector.api.app as app_module
from collector.cli import app
from collector.core.settings import CollectorSettings, Mode
from tests.collector.serving import free_port

runner = CliRunner()
TOKEN = "serve-test-" + "t" * 30
METRICS_PORT = free_port()


@dataclass(frozen=True)
class Option:
    """One option of `serve` as it existed: its flag, a value, where it lands."""

    flag: str
    args: tuple[str, ...]  # after the flag ((): a switch)
    field: str
    expected: Any
    env: dict[str, str]  # variables that give the same result


OPTIONS = [
    Option("--database-url", ("sqlite:////tmp/bw-x.db",), "database_url",
           "sqlite:////tmp/bw-x.db", {"BLOCKWATCH_DATABASE_URL": "sqlite:////tmp/bw-x.db"}),
    Option("--host", ("127.0.0.9",), "host", "127.0.0.9", {"BLOCKWATCH_HOST": "127.0.0.9"}),
    Option("--port", ("9099",), "port", 9099, {"BLOCKWATCH_PORT": "9099"}),
    Option("--open-enrollment", (), "open_enrollment", True,
           {"BLOCKWATCH_OPEN_ENROLLMENT": "true"}),
    Option("--no-control", (), "no_control", True, {"BLOCKWATCH_NO_CONTROL": "1"}),
    Option("--admin-token", (TOKEN,), "admin_token", TOKEN, {"BLOCKWATCH_ADMIN_TOKEN": TOKEN}),
    Option("--ca-file", ("/tmp/bw-ca.pem",), "ca_file", Path("/tmp/bw-ca.pem"),
           {"BLOCKWATCH_CA_FILE": "/tmp/bw-ca.pem"}),
    Option("--measure-interval", ("2m",), "measure_interval", 120.0,
           {"BLOCKWATCH_MEASURE_INTERVAL": "2m"}),
    Option("--control-resolver", ("192.0.2.1:53", "--control-resolver", "192.0.2.2"),
           "control_resolvers", "192.0.2.1:53,192.0.2.2",
           {"BLOCKWATCH_CONTROL_RESOLVERS": "192.0.2.1:53,192.0.2.2"}),
    Option("--lab-network", ("10.0.0.0/8", "--lab-network", "fd00::/8"), "lab_networks",
           "10.0.0.0/8,fd00::/8", {"BLOCKWATCH_LAB_NETWORKS": "10.0.0.0/8,fd00::/8"}),
    Option("--control-concurrency", ("7",), "control_concurrency", 7,
           {"BLOCKWATCH_CONTROL_CONCURRENCY": "7"}),
    Option("--control-port", ("8443",), "control_port", 8443, {"BLOCKWATCH_CONTROL_PORT": "8443"}),
    Option("--control-timeout", ("2.5",), "control_timeout", 2.5,
           {"BLOCKWATCH_CONTROL_TIMEOUT": "2.5"}),
    Option("--detect-interval", ("30s",), "detect_interval", 30.0,
           {"BLOCKWATCH_DETECT_INTERVAL": "30s"}),
    Option("--detect-window", ("10m",), "detect_window", 600.0,
           {"BLOCKWATCH_DETECT_WINDOW": "10m"}),
    Option("--control-window", ("1m",), "control_window", 60.0,
           {"BLOCKWATCH_CONTROL_WINDOW": "1m"}),
    Option("--control-wait", ("90",), "control_wait", 90.0, {"BLOCKWATCH_CONTROL_WAIT": "90"}),
    Option("--open-min-probes", ("3",), "open_min_probes", 3, {"BLOCKWATCH_OPEN_MIN_PROBES": "3"}),
    Option("--stay-min-probes", ("2",), "stay_min_probes", 2, {"BLOCKWATCH_STAY_MIN_PROBES": "2"}),
    Option("--close-min-probes", ("4",), "close_min_probes", 4,
           {"BLOCKWATCH_CLOSE_MIN_PROBES": "4"}),
    Option("--collapse-ratio", ("0.25",), "collapse_ratio", 0.25,
           {"BLOCKWATCH_COLLAPSE_RATIO": "0.25"}),
    Option("--residual", ("2m",), "residual_seconds", 120.0, {"BLOCKWATCH_RESIDUAL": "2m"}),
    Option("--no-detector", (), "detector", False, {"BLOCKWATCH_NO_DETECTOR": "true"}),
    Option("--webhook-allow-private", (), "webhook_allow_private", True,
           {"BLOCKWATCH_WEBHOOK_ALLOW_PRIVATE": "yes"}),
    Option("--mode", ("demo",), "mode", Mode.DEMO, {"BLOCKWATCH_MODE": "demo"}),
    # Added with the publication policy (issue 14); the metrics listener really listens.
    Option("--publish-min-volunteers", ("5",), "publish_min_volunteers", 5,
           {"BLOCKWATCH_PUBLISH_MIN_VOLUNTEERS": "5"}),
    Option("--metrics-port", (str(METRICS_PORT),), "metrics_port", METRICS_PORT,
           {"BLOCKWATCH_METRICS_PORT": str(METRICS_PORT)}),
    Option("--metrics-host", ("127.0.0.1", "--metrics-port", str(METRICS_PORT)), "metrics_host",
           "127.0.0.1", {"BLOCKWATCH_METRICS_HOST": "127.0.0.1",
                         "BLOCKWATCH_METRICS_PORT": str(METRICS_PORT)}),
    # Added with the evidence bundles (issue 14).
    Option("--evidence-delay", ("2h",), "evidence_delay", 7200.0,
           {"BLOCKWATCH_EVIDENCE_DELAY": "2h"}),
    Option("--key-file", ("/tmp/bw-collector-key.pem",), "key_file",
           Path("/tmp/bw-collector-key.pem"), {"BLOCKWATCH_KEY_FILE": "/tmp/bw-collector-key.pem"}),
    # Added with the localized alerts (issue 17).
    Option("--alert-language", ("zh-Hans",), "alert_language", "zh-Hans",
           {"BLOCKWATCH_ALERT_LANGUAGE": "zh-Hans"}),
]  # fmt: skip
# The variables named after the settings' fields (read by the settings themselves).
FIELD_VARIABLES = [
    ("BLOCKWATCH_RESIDUAL_SECONDS", "120", "residual_seconds", 120.0),
    ("BLOCKWATCH_DETECTOR", "false", "detector", False),
    ("BLOCKWATCH_PUBLIC_URL", "https://bw.example", "public_url", "https://bw.example"),
    ("BLOCKWATCH_RETEST_SPACING", "60", "retest_spacing", 60.0),
]
# Each option's help text at the time OPTIONS was written.
HELP_TEXTS = {
    "--database-url": "sqlite:///./blockwatch.db (default) or postgresql://user@host/db",
    "--measure-interval": "Control prober's interval, handed to probes too (90, 30s, 5m). "
    "Default 5m.",
    "--control-resolver": "Resolver IP[:PORT] of the control prober, repeatable. Default: the "
    "system's (in production; the lab and demo modes need it named, or run no control).",
    "--lab-network": "CIDR treated as globally routable (labs), repeatable.",
    "--control-port": "Instances' HTTPS port (443).",
    "--control-timeout": "Seconds.",
    "--detect-interval": "Time between detection passes (15s).",
    "--detect-window": "Sliding window of the detector (default: 3 measure intervals).",
    "--control-window": "Greatest time between a measurement and its control "
    "(default: 1 interval).",
    "--control-wait": "How long a failed measurement waits for a control taken after it "
    "(default: 1 interval + 60s), then is unknown.",
    "--open-min-probes": "Probes that open an event (2).",
    "--stay-min-probes": "Blocked probes that keep one open (1).",
    "--close-min-probes": "Probes of the affected networks that must say ok to close it (2).",
    "--collapse-ratio": "Reporting probes, as a share of their peak, that is reported as a "
    "collapse.",
    "--residual": "How long after an SNI trigger a probe's failures on that address are residue "
    "(the GFW's 90-180s; default 180s).",
    "--no-detector": "Serve the API only: no detector, no control prober (another replica runs "
    "them).",
    "--workers": "Processes serving the API (one per core on a busy collector).",
}
# The switches' negative forms, which also existed.
NEGATIVE_SWITCHES = {
    "--no-open-enrollment": "open_enrollment",
    "--no-no-control": "no_control",
    "--no-webhook-allow-private": "webhook_allow_private",
}


@dataclass
class Served:
    """What `serve` handed to uvicorn."""

    settings: list[CollectorSettings]
    runs: list[dict[str, Any]]


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    """`serve` with uvicorn recording its arguments, in a clean environment."""
    import uvicorn

    saved = dict(os.environ)
    for name in list(os.environ):
        if name.startswith("BLOCKWATCH_"):
            monkeypatch.delenv(name)
    record = Served([], [])

    def create_app(settings: CollectorSettings, **_: Any) -> str:
        record.settings.append(settings)
        return "app"

    def run(target: Any, **kwargs: Any) -> None:
        record.runs.append({"target": target, **kwargs})

    monkeypatch.setattr(app_module, "create_app", create_app)
    monkeypatch.setattr(uvicorn, "run", run)
    monkeypatch.setattr(gc, "set_threshold", lambda *_: None)
    yield record
    # `serve --workers N` exports what its workers read: undo it.
    os.environ.clear()
    os.environ.update(saved)


def serve(args: list[str], env: dict[str, str] | None = None) -> Any:
    return runner.invoke(app, ["serve", *args], env=env)


def settings_of(served: Served, args: list[str], env: dict[str, str] | None = None) -> Any:
    result = serve(args, env)
    assert result.exit_code == 0, result.output
    return served.settings[-1]


def value(settings: CollectorSettings, field: str) -> Any:
    got = getattr(settings, field)
    return got.get_secret_value() if field == "admin_token" else got


@pytest.mark.parametrize("option", OPTIONS, ids=[o.flag for o in OPTIONS])
def test_each_flag_reaches_the_settings(served: Served, option: Option) -> None:
    mode = [] if option.flag == "--mode" else ["--mode", "lab"]
    settings = settings_of(served, [*mode, option.flag, *option.args])
    assert value(settings, option.field) == option.expected


@pytest.mark.parametrize("option", OPTIONS, ids=[o.flag for o in OPTIONS])
def test_each_variable_reaches_the_settings(served: Served, option: Option) -> None:
    env = {"BLOCKWATCH_MODE": "lab", **option.env}
    settings = settings_of(served, [], env)
    assert value(settings, option.field) == option.expected


@pytest.mark.parametrize(("name", "text", "field", "expected"), FIELD_VARIABLES)
def test_field_named_variables_reach_the_settings(
    served: Served, name: str, text: str, field: str, expected: Any
) -> None:
    settings = settings_of(served, [], {"BLOCKWATCH_MODE": "lab", name: text})
    assert value(settings, field) == expected


def test_the_flag_wins_over_the_variable(served: Served) -> None:
    env = {"BLOCKWATCH_MODE": "lab", "BLOCKWATCH_PORT": "9001", "BLOCKWATCH_OPEN_ENROLLMENT": "1"}
    settings = settings_of(served, ["--port", "9002", "--no-open-enrollment"], env)
    assert (settings.port, settings.open_enrollment) == (9002, False)


@pytest.mark.parametrize(("flag", "field"), NEGATIVE_SWITCHES.items())
def test_negative_switches_still_work(served: Served, flag: str, field: str) -> None:
    env = {"BLOCKWATCH_MODE": "lab", f"BLOCKWATCH_{field.upper()}": "true"}
    assert getattr(settings_of(served, [flag], env), field) is False


def test_residual_may_be_zero(served: Served) -> None:
    assert settings_of(served, ["--mode", "lab", "--residual", "0"]).residual_seconds == 0.0


def test_defaults_are_the_settings_defaults(served: Served) -> None:
    settings = settings_of(served, ["--mode", "lab"])
    assert settings == CollectorSettings(mode=Mode.LAB)
    assert served.runs[-1]["host"] == "127.0.0.1"
    assert served.runs[-1]["port"] == 8080
    assert "workers" not in served.runs[-1]  # one process: the app itself


@pytest.mark.parametrize(
    ("args", "env"),
    [(["--workers", "3"], {}), ([], {"BLOCKWATCH_WORKERS": "3"})],
    ids=["flag", "variable"],
)
def test_workers(served: Served, tmp_path: Path, args: list[str], env: dict[str, str]) -> None:
    db = ["--database-url", f"sqlite:///{tmp_path}/w.db", "--mode", "lab"]
    result = serve([*db, *args], env)
    assert result.exit_code == 0, result.output
    run = served.runs[-1]
    assert run["workers"] == 3
    assert run["target"] == "collector.api.app:create_app_from_env"
    assert run["factory"] is True


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "0"], "--port"),
        (["--port", "http"], "--port"),
        (["--measure-interval", "soon"], "soon"),
        (["--detect-window", "0"], "invalid duration"),
        (["--control-timeout", "0.01"], "--control-timeout"),
        (["--collapse-ratio", "1.5"], "--collapse-ratio"),
        (["--mode", "party"], "--mode"),
        (["--workers", "0"], "--workers"),
        (["--open-min-probes", "1", "--stay-min-probes", "2"], "stay_min_probes"),
    ],
)
def test_invalid_values_exit_2_with_a_message(
    served: Served, args: list[str], message: str
) -> None:
    result = serve(["--mode", "lab", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not served.runs


def test_production_refuses_a_placeholder_token(served: Served) -> None:
    result = serve(["--admin-token", "changeme"])
    assert result.exit_code == 2
    assert "refusing to start" in result.output


def test_settings_only_fields_are_not_flags() -> None:
    import typer.main

    command = typer.main.get_command(app)
    serve_command = command.commands["serve"]  # type: ignore[attr-defined]
    flags = {opt for p in serve_command.params for opt in [*p.opts, *p.secondary_opts]}
    today = {o.field for o in OPTIONS}
    settings_only = set(CollectorSettings.model_fields) - today - {"workers"}
    assert settings_only  # e.g. retest_spacing, public_url
    for field in settings_only:
        assert "--" + field.replace("_", "-") not in flags, field
    assert {o.flag for o in OPTIONS} | set(NEGATIVE_SWITCHES) | {"--workers"} <= flags


def test_help_shows_the_texts() -> None:
    result = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "2000"})
    assert result.exit_code == 0
    shown = re.sub(r"\s+", " ", result.output.replace("│", " "))
    for flag, text in HELP_TEXTS.items():
        assert flag in shown
        assert text in shown, flag
    for option in OPTIONS:
        assert option.flag in shown


def test_workers_receive_equal_settings(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each worker rebuilds the very settings serve built, from the flags and the variables."""
    url = f"sqlite:///{tmp_path}/w.db"
    args = ["--database-url", url, "--mode", "lab", "--admin-token", TOKEN, "--workers", "2",
            "--measure-interval", "2m", "--no-detector", "--control-resolver", "192.0.2.1:53",
            "--control-resolver", "192.0.2.2", "--residual", "0"]  # fmt: skip
    env = {"BLOCKWATCH_PUBLIC_URL": "https://bw.example", "BLOCKWATCH_CONTROL_CC": "DE"}
    before = {k for k in os.environ if k.startswith("BLOCKWATCH_")}
    result = serve(args, env)
    assert result.exit_code == 0, result.output
    # serve exported no BLOCKWATCH_* variable of its own: the settings travel whole.
    assert {k for k in os.environ if k.startswith("BLOCKWATCH_")} <= before | set(env)
    for name, text in env.items():
        monkeypatch.setenv(name, text)
    expected = CollectorSettings(
        database_url=url, mode=Mode.LAB, admin_token=TOKEN, workers=2, measure_interval=120,
        detector=False, control_resolvers="192.0.2.1:53,192.0.2.2", residual_seconds=0,
        public_url="https://bw.example", control_cc="DE",
    )  # fmt: skip
    # A variable set after serve started does not change what the workers get.
    monkeypatch.setenv("BLOCKWATCH_PORT", "1234")
    app_module.create_app_from_env()
    assert served.settings[-1] == expected
    assert served.settings[-1].admin_token.get_secret_value() == TOKEN
    assert TOKEN not in result.output
    assert TOKEN not in repr(served.settings[-1])


def test_a_worker_run_by_hand_reads_blockwatch_variables(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BLOCKWATCH_MODE", "lab")
    monkeypatch.setenv("BLOCKWATCH_PORT", "1234")
    app_module.create_app_from_env()
    assert served.settings[-1].port == 1234


def test_a_settings_error_names_its_option_or_variable(served: Served) -> None:
    flag = serve(["--mode", "lab", "--measure-interval", "0"])
    assert flag.exit_code == 2
    assert "--measure-interval" in flag.output
    variable = serve([], {"BLOCKWATCH_MODE": "lab", "BLOCKWATCH_CONTROL_CC": "china"})
    assert variable.exit_code == 2
    assert "BLOCKWATCH_CONTROL_CC" in variable.output
