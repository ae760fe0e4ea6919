"""The lab fixture: one lab per test module, reset before each test."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.lab.lab import Lab
from tests.lab.preflight import LabUnavailable, require_lab_support


def _require_lab() -> None:
    try:
        require_lab_support()
    except LabUnavailable as exc:
        if os.environ.get("CI"):
            raise  # CI runs as root with the tools installed: a missing lab is a failure
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    _require_lab()
    with Lab() as running:
        yield running


@pytest.fixture
def fresh_lab(lab: Lab) -> Lab:
    lab.reset()
    return lab
