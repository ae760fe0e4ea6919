"""The zh-Hans catalog covers every string of the pages, is compiled from its .po,
and a page in zh-Hans shows none of the English UI strings."""

from __future__ import annotations

import io
from pathlib import Path

from babel.messages.extract import extract_from_dir
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from fastapi.testclient import TestClient

from tests.collector.detection.test_pass import World, world  # noqa: F401  (the fixture)

ROOT = Path(__file__).resolve().parents[3]
CATALOG = ROOT / "collector" / "locale" / "zh_Hans" / "LC_MESSAGES" / "messages.po"
METHODS = [
    ("collector/**.py", "python"),
    ("collector/api/templates/**.html", "jinja2"),
]
OPTIONS = {"collector/api/templates/**.html": {"extensions": "jinja2.ext.i18n", "trimmed": "true"}}


def ui_strings() -> set[str | tuple[str, str]]:
    found: set[str | tuple[str, str]] = set()
    for _file, _line, message, _comments, _context in extract_from_dir(
        str(ROOT), METHODS, options_map=OPTIONS
    ):
        found.add(message if isinstance(message, str) else (message[0], message[1]))
    return found


def catalog():  # type: ignore[no-untyped-def]
    with CATALOG.open("rb") as f:
        return read_po(f, locale="zh_Hans")


def test_every_ui_string_is_translated_in_zh_hans() -> None:
    strings = ui_strings()
    assert len(strings) > 40  # the extraction found the templates
    translated = {m.id: m for m in catalog() if m.id}
    missing = [s for s in strings if s not in translated]
    assert missing == [], f"not in the zh-Hans catalog (run make locale): {missing}"
    empty = [m.id for m in translated.values()
             if not (all(m.string) if isinstance(m.string, tuple) else m.string)]  # fmt: skip
    fuzzy = [m.id for m in translated.values() if m.fuzzy]
    assert empty == [] and fuzzy == [], (empty, fuzzy)


def test_the_compiled_catalog_is_the_po_file() -> None:
    compiled = io.BytesIO()
    write_mo(compiled, catalog())
    mo = CATALOG.with_suffix(".mo")
    assert mo.exists(), "make compiles it: make collector/locale/zh_Hans/LC_MESSAGES/messages.mo"
    assert mo.read_bytes() == compiled.getvalue(), "stale .mo: make recompiles it"


def test_a_zh_hans_page_shows_no_english_ui_string(world: World) -> None:  # noqa: F811
    client: TestClient = world.client
    english = client.get("/", params={"lang": "en"}).text
    chinese = client.get("/", params={"lang": "zh-Hans"}).text
    assert "实例" in chinese and "被封锁了吗" in chinese
    for message in catalog():
        if not message.id or isinstance(message.id, tuple) or message.string == message.id:
            continue
        if message.id in english and len(message.id) > 3:
            assert message.id not in chinese, f"untranslated in zh-Hans: {message.id!r}"
    badge = client.get("/i/alive.bar/badge.svg", params={"lang": "zh-Hans"}).text
    assert "未知" in badge
