"""The command line: input validation (exit 2, nothing sent), version, table rendering."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from probe_agent.cli import EXIT_INVALID_INPUT, app
from probe_agent.cli.render import build_table, to_json_line
from probe_agent.measure.observations import HTTPObservation, Measurement, TLSObservation

runner = CliRunner()


@pytest.mark.parametrize(
    "args",
    [
        ["measure", "bad_name!.example", "--resolver", "127.0.0.1:1"],
        ["measure", "-x.example", "--resolver", "127.0.0.1:1"],
        ["measure", "a" * 300 + ".example", "--resolver", "127.0.0.1:1"],
        ["measure", "ok.example", "--resolver", "dns.google"],
        ["measure", "ok.example", "--resolver", "127.0.0.1", "--lab-network", "nope"],
        ["measure", "--resolver", "127.0.0.1"],
        ["measure", "ok.example", "--port", "0"],
        ["measure", "ok.example", "--format", "xml"],
    ],
)
def test_invalid_input_exits_2_without_output(args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == EXIT_INVALID_INPUT, result.output
    assert '"measurement_id"' not in result.stdout


def test_invalid_domain_message_names_the_domain() -> None:
    result = runner.invoke(app, ["measure", "bad_name!.example", "--resolver", "127.0.0.1:1"])
    assert "invalid domain 'bad_name!.example'" in result.output


def test_options_read_environment() -> None:
    result = runner.invoke(app, ["measure", "ok.example"], env={"BLOCKWATCH_RESOLVER": "not-an-ip"})
    assert result.exit_code == EXIT_INVALID_INPUT
    assert "invalid resolver 'not-an-ip'" in result.output


def test_version() -> None:
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0
    assert result.stdout.startswith("blockwatch-probe ")


def _measurement() -> Measurement:
    m = Measurement(
        measurement_id="m1",
        domain="alive.bar",
        port=443,
        scheme="https",
        started_at="2026-01-01T00:00:00.000Z",
        software={"name": "blockwatch-probe", "version": "0"},
        decoy_sni="example.com",
    )
    m.tls = [
        TLSObservation(t0=0, t=1, ip="45.76.1.2", port=443, sni="example.com", decoy=True),
        TLSObservation(
            t0=1, t=2, ip="45.76.1.2", port=443, sni="alive.bar", failure="connection_reset"
        ),
    ]
    m.http = [HTTPObservation(t0=2, t=3, url="u", ip="45.76.1.2", port=443, status_code=200)]
    m.hints = ["tls_sni_blocked"]
    return m


def test_table_shows_failures_and_hints() -> None:
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(build_table([_measurement()]))
    text = console.export_text()
    assert "alive.bar" in text
    assert "connection_reset" in text
    assert "tls_sni_blocked" in text


def test_json_line_is_one_line() -> None:
    line = to_json_line(_measurement())
    assert "\n" not in line
    assert '"domain":"alive.bar"' in line


def test_collector_timeout_default_matches_the_client() -> None:
    import inspect

    from probe_agent import cli
    from probe_agent.daemon import client

    default = inspect.signature(cli.run).parameters["collector_timeout"].default
    assert default == client.DEFAULT_TIMEOUT
