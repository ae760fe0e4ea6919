"""The rooms and their doors (docs/architecture.md), checked on the code itself.

- The import contracts in pyproject.toml (``[tool.importlinter]``): which room may
  import which. ``make lint`` runs them too; here they also fail a plain ``pytest``.
- No module imports another module's ``_private`` name.
- Each file in the probe's state directory has one owner: one module opens it
  (reads, writes or removes it); the others ask that module.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("probe_agent", "collector")


def _modules() -> list[tuple[str, Path]]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" in path.parts:
                continue  # Alembic's own layout
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found.append((name, path))
    return found


def test_import_contracts_are_kept() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    run = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "BROKEN" not in run.stdout
    assert " KEPT" in run.stdout


def _private_imports(module: str, path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom) or node.module is None or node.level:
            continue
        if node.module.split(".")[0] not in PACKAGES or node.module == module:
            continue
        for alias in node.names:
            if alias.name.startswith("_") and not alias.name.startswith("__"):
                found.append(f"{module}:{node.lineno} imports {node.module}.{alias.name}")
    return found


def test_no_module_imports_another_modules_private_name() -> None:
    offences = [hit for name, path in _modules() for hit in _private_imports(name, path)]
    assert offences == []


def test_the_private_name_check_sees_an_offence(tmp_path: Path) -> None:
    """The check above would see an offence (it is not vacuously empty)."""
    sample = tmp_path / "sample.py"
    sample.write_text("from probe_agent.state.identity import _secret\n")
    assert _private_imports("probe_agent.cli", sample) == [
        "probe_agent.cli:1 imports probe_agent.state.identity._secret"
    ]


# The files of the probe's --state-dir, by the constant that names them.
STATE_FILES = {
    "key.pem": "probe_agent.state.identity",
    "state.json": "probe_agent.state.identity",
    "spool.db": "probe_agent.state.spool",
}


@pytest.mark.parametrize("file_name", sorted(STATE_FILES))
def test_each_state_file_is_named_by_one_module(file_name: str) -> None:
    """Only the owner spells the file's name; others use the owner's functions."""
    spelled = [
        name
        for name, path in _modules()
        if name.startswith("probe_agent") and f'"{file_name}' in path.read_text(encoding="utf-8")
    ]
    assert spelled == [STATE_FILES[file_name]]
