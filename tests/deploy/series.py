"""The series names the collector exports, for checking what the deploy files read."""

from __future__ import annotations

import re

from collector.core.metrics import REGISTRY

SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_sum", "_count", "_bucket")}


def exported() -> set[str]:
    return {
        family.name + suffix
        for family in REGISTRY.collect()
        for suffix in SUFFIXES.get(family.type, ("",))
    }


def read_by(expr: str) -> list[str]:
    """The collector's series an expression reads."""
    return re.findall(r"\bblockwatch_\w+", expr)
