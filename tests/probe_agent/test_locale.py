"""The probe's zh-Hans catalog covers every string pybabel extracts from probe_agent,
keeps their placeholders, is compiled from its .po, and ships in the wheel."""

from __future__ import annotations

import io
import re
import time
import zipfile
from pathlib import Path

import pytest
from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

ROOT = Path(__file__).resolve().parents[2]
CATALOG = ROOT / "probe_agent" / "locale" / "zh_Hans" / "LC_MESSAGES" / "probe.po"
COMPILED = CATALOG.with_suffix(".mo")
METHODS = [("probe_agent/**.py", "python")]  # babel-probe.cfg
PLACEHOLDER = re.compile(r"%\((\w+)\)[sdr]")


def ui_strings() -> set[str]:
    found: set[str] = set()
    for _file, _line, message, _comments, _context in extract_from_dir(str(ROOT), METHODS):
        assert isinstance(message, str), f"the probe has no plural messages: {message}"
        found.add(message)
    return found


def catalog() -> Catalog:
    with CATALOG.open("rb") as f:
        return read_po(f, locale="zh_Hans")


def test_every_probe_string_is_translated_in_zh_hans() -> None:
    strings = ui_strings()
    assert len(strings) > 150  # the extraction found the CLI, the status and the errors
    translated = {m.id: m for m in catalog() if m.id}
    missing = sorted(s for s in strings if s not in translated)
    assert missing == [], f"not in the zh-Hans catalog (run make locale): {missing}"
    empty = [m.id for m in translated.values() if not m.string]
    fuzzy = [m.id for m in translated.values() if m.fuzzy]
    assert empty == [] and fuzzy == [], (empty, fuzzy)
    stale = sorted(set(translated) - strings)
    assert stale == [], f"translated but no longer in the code (run make locale): {stale}"


def test_translations_keep_their_placeholders_and_add_no_markup() -> None:
    for message in catalog():
        if not message.id:
            continue
        assert isinstance(message.id, str) and isinstance(message.string, str)
        assert sorted(PLACEHOLDER.findall(message.string)) == sorted(
            PLACEHOLDER.findall(message.id)
        ), message.id
        # Help texts and console lines are rich markup: a bracket of the translation's own
        # would be read as a style.
        assert message.string.count("[") <= message.id.count("["), message.id


def test_the_compiled_catalog_is_the_po_file() -> None:
    compiled = io.BytesIO()
    write_mo(compiled, catalog())
    assert COMPILED.exists(), (
        "make compiles it: make probe_agent/locale/zh_Hans/LC_MESSAGES/probe.mo"
    )
    assert COMPILED.read_bytes() == compiled.getvalue(), "stale .mo: make recompiles it"


def test_the_wheel_ships_the_compiled_catalog(tmp_path: Path) -> None:
    """hatchling builds the wheel as `pip wheel` would (its .gitignore'd .mo is an artifact)."""
    builder = pytest.importorskip("hatchling.builders.wheel")
    assert COMPILED.exists(), "make compiles it first"
    started = time.monotonic()
    (wheel,) = builder.WheelBuilder(str(ROOT)).build(directory=str(tmp_path), versions=["standard"])
    assert time.monotonic() - started < 20
    with zipfile.ZipFile(wheel) as built:
        names = set(built.namelist())
        shipped = built.read("probe_agent/locale/zh_Hans/LC_MESSAGES/probe.mo")
    assert shipped == COMPILED.read_bytes()
    assert "probe_agent/i18n.py" in names
