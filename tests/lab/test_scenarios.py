"""The whole scenario catalogue through the real CLI, in the real lab."""

from __future__ import annotations

import pytest

from tests.lab.lab import Lab
from tests.lab.scenarios import CATALOGUE, Scenario

pytestmark = pytest.mark.lab


@pytest.mark.parametrize("scenario", CATALOGUE, ids=[s.name for s in CATALOGUE])
def test_scenario(fresh_lab: Lab, scenario: Scenario) -> None:
    scenario.setup(fresh_lab)
    errors: list[str] = []
    for step in scenario.steps:
        measured = fresh_lab.measure(step.vantage, list(step.expect), *step.args)
        for domain, expect in step.expect.items():
            errors += [f"[{step.vantage}] {e}" for e in expect.check(measured[domain])]
    assert not errors, "\n".join(errors)
