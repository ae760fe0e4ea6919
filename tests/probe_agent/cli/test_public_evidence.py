"""``run --public-evidence``: off unless the volunteer says so, then in every check-in."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from probe_agent.cli import app
from tests.support.fake_collector import FakeCollector
from tests.support.probing import run_probe
from tests.support.simnet import SimInstance, SimulatedNetwork, run_once_args


@pytest.mark.parametrize(
    ("extra", "env", "expected"),
    [
        ([], {}, False),
        (["--public-evidence"], {}, True),
        ([], {"BLOCKWATCH_PUBLIC_EVIDENCE": "1"}, True),
    ],
)
async def test_the_checkin_carries_the_volunteers_choice(
    tmp_path: Path, extra: list[str], env: dict[str, str], expected: bool
) -> None:
    async with (
        SimulatedNetwork(tmp_path / "net", [SimInstance("a.example")]) as net,
        FakeCollector(targets=["a.example"]) as collector,
    ):
        args = [*run_once_args(net, tmp_path / "s", collector.url), *extra]
        run = await run_probe(args, command="run", extra_env=env)
    assert run.returncode == 0, run.stderr
    assert [c["public_evidence"] for c in collector.checkins] == [expected]
    assert collector.problems == []


def test_the_help_says_what_publishing_means() -> None:
    result = CliRunner().invoke(app, ["run", "--help"], terminal_width=200)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "--public-evidence" in text
    assert "exact times" in text and "enough volunteers" in text
