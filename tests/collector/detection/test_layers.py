"""The collector's layering, read from its import statements (nothing is imported).

api, cli > detection > services > alerts, netsafety > analysis > core: a module
imports its own layer or lower ones, never a higher one; the pure parts
(collector.analysis, collector.detection.machine) import no database code and
nothing of the collector beyond the analysis.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import collector

ROOT = Path(collector.__file__).parent
RANK = {
    "core": 0,
    "migrations": 0,
    "analysis": 1,
    "alerts": 2,
    "netsafety": 2,
    "services": 3,
    "detection": 4,
    "api": 5,
    "cli": 5,
}
DATABASE = ("sqlalchemy", "psycopg", "alembic", "collector.core.db", "collector.core.models")


def imports(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "collector" and len(parts) > 1 else None


def modules() -> Iterator[tuple[Path, str]]:
    for path in sorted(ROOT.rglob("*.py")):
        layer = path.relative_to(ROOT).with_suffix("").parts[0]
        if layer in RANK:
            yield path, layer


def test_no_module_imports_a_higher_layer() -> None:
    upward = [
        f"{path.relative_to(ROOT)} -> {module}"
        for path, layer in modules()
        for module in imports(path)
        if (target := layer_of(module)) in RANK and RANK[str(target)] > RANK[layer]
    ]
    assert upward == []


def test_the_pure_parts_import_no_database_code() -> None:
    pure = [p for p, layer in modules() if layer == "analysis"]
    pure.append(ROOT / "detection" / "machine.py")
    found = [
        f"{path.relative_to(ROOT)} -> {module}"
        for path in pure
        for module in imports(path)
        if module.startswith(DATABASE) or layer_of(module) not in (None, "analysis")
    ]
    assert found == []


def test_ingest_authenticates_through_the_auth_module_not_the_probe_service() -> None:
    assert "collector.services.probes" not in set(imports(ROOT / "services" / "ingest.py"))
