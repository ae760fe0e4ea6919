"""`targets import --builtin NAME`: the lists shipped with the collector (collector/data)."""

from __future__ import annotations

import csv
import io
import json
from importlib import resources
from pathlib import Path

from typer.testing import CliRunner

from collector.cli import app

runner = CliRunner()


def shipped_domains() -> set[str]:
    text = (resources.files("collector") / "data" / "targets-fediverse-zh.csv").read_text()
    return {row["domain"] for row in csv.DictReader(io.StringIO(text))}


def test_builtin_fediverse_zh_imports_its_18_domains(database_url: str) -> None:
    result = runner.invoke(
        app, ["targets", "import", "--builtin", "fediverse-zh", "--database-url", database_url]
    )
    assert result.exit_code == 0, result.output
    assert "18 target(s) imported, 0 skipped" in result.stdout
    listed = runner.invoke(app, ["targets", "list", "--json", "--database-url", database_url])
    domains = {t["domain"] for t in json.loads(listed.stdout)}
    assert len(domains) == 18
    assert domains == shipped_domains()
    assert "alive.bar" in domains


def test_builtin_and_a_file_are_exclusive(tmp_path: Path) -> None:
    seed = tmp_path / "seed.txt"
    seed.write_text("alive.bar\n")
    url = f"sqlite:///{tmp_path}/b.db"
    both = runner.invoke(
        app, ["targets", "import", str(seed), "--builtin", "fediverse-zh", "--database-url", url]
    )
    assert both.exit_code == 2
    assert "not both" in both.output
    neither = runner.invoke(app, ["targets", "import", "--database-url", url])
    assert neither.exit_code == 2
    assert "--builtin" in neither.output


def test_an_unknown_builtin_lists_the_known_ones(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/b.db"
    result = runner.invoke(
        app, ["targets", "import", "--builtin", "fediverse-xx", "--database-url", url]
    )
    assert result.exit_code == 2
    assert "fediverse-xx" in result.output
    assert "known: fediverse-zh" in result.output
