"""Choosing the language (BLOCKWATCH_LANG, then POSIX, then English), loading the
catalog (a missing or broken one is English), and translatable messages."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest

from probe_agent import i18n
from probe_agent.protocol.errors import InvalidDomainError, InvalidOptionError
from probe_agent.protocol.inputs import normalize_domain
from probe_agent.protocol.messages import N_, Message, error_text, label, pad, untranslated, width


@pytest.fixture(autouse=True)
def _fresh_language() -> Iterator[None]:
    """Each test chooses its language; none leaks into the next."""
    i18n.catalog.cache_clear()
    yield
    i18n.catalog.cache_clear()
    i18n.use(i18n.ENGLISH)


@pytest.mark.parametrize(
    ("tag", "language"),
    [
        ("en", "en"),
        ("en_US.UTF-8", "en"),
        ("C", "en"),
        ("C.UTF-8", "en"),
        ("POSIX", "en"),
        ("zh-Hans", "zh-Hans"),
        ("zh", "zh-Hans"),
        ("zh_CN", "zh-Hans"),
        ("zh_CN.UTF-8", "zh-Hans"),
        ("zh-CN", "zh-Hans"),
        ("zh_TW.Big5", "zh-Hans"),
        ("zh_HK", "zh-Hans"),
        ("zh-Hant", "zh-Hans"),
        ("ZH_cn.utf8@pinyin", "zh-Hans"),
        ("de_DE.UTF-8", None),
        ("", None),
    ],
)
def test_tags_and_locales(tag: str, language: str | None) -> None:
    assert i18n.normalize(tag) == language


@pytest.mark.parametrize(
    ("environ", "language"),
    [
        ({}, "en"),
        ({"LANG": "C.UTF-8"}, "en"),
        ({"LANG": "zh_CN.UTF-8"}, "zh-Hans"),
        ({"LC_ALL": "zh_TW.UTF-8", "LANG": "en_US.UTF-8"}, "zh-Hans"),
        ({"LC_MESSAGES": "zh_CN", "LANG": "en_US"}, "zh-Hans"),
        ({"LC_ALL": "en_US.UTF-8", "LANG": "zh_CN.UTF-8"}, "en"),  # the first one set
        ({"LANGUAGE": "de:zh_CN:en", "LANG": "de_DE"}, "zh-Hans"),  # a list, in order
        ({"LANGUAGE": "en:zh_CN"}, "en"),
        ({"LANGUAGE": "", "LANG": "zh_CN.UTF-8"}, "zh-Hans"),  # empty is unset
        ({"LANG": "fr_FR.UTF-8"}, "en"),  # no French: English
        ({"BLOCKWATCH_LANG": "zh-Hans", "LANG": "C.UTF-8"}, "zh-Hans"),
        ({"BLOCKWATCH_LANG": "en", "LANG": "zh_CN.UTF-8"}, "en"),
        ({"BLOCKWATCH_LANG": "zh_CN", "LC_ALL": "C"}, "zh-Hans"),
        ({"BLOCKWATCH_LANG": "fr", "LANG": "zh_CN.UTF-8"}, "en"),  # asked for, not there
    ],
)
def test_the_environment_chooses(environ: dict[str, str], language: str) -> None:
    assert i18n.choose(environ) == language


def test_use_reads_the_environment_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BLOCKWATCH_LANG", "zh_CN")
    assert i18n.use() == "zh-Hans"
    assert i18n.use("en") == "en"
    assert i18n.use("zh-TW") == "zh-Hans"
    assert i18n.use("klingon") == "en"


def test_english_loads_no_catalog() -> None:
    i18n.use("en")
    assert i18n.catalog("en") is untranslated
    assert i18n.gettext("health:") == "health:"


def test_chinese_comes_from_the_catalog() -> None:
    i18n.use("zh-Hans")
    assert i18n.gettext("health:") == "健康状况："
    assert i18n.gettext("no such message") == "no such message"


def test_a_missing_catalog_is_english(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(i18n, "LOCALE_DIR", tmp_path)
    i18n.use("zh-Hans")
    assert i18n.gettext("health:") == "health:"


def test_a_broken_catalog_is_english(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    broken = tmp_path / "zh_Hans" / "LC_MESSAGES" / "probe.mo"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"\xde\x12\x04\x95 not a catalog")
    monkeypatch.setattr(i18n, "LOCALE_DIR", tmp_path)
    i18n.use("zh-Hans")
    assert i18n.gettext("health:") == "health:"
    assert i18n.error(InvalidOptionError(N_("no domain given"))) == "no domain given"


def test_a_message_is_its_english() -> None:
    message = Message(N_("invalid domain %(raw)r: bad label %(label)r"), raw="a_b.c", label="a_b")
    assert message == "invalid domain 'a_b.c': bad label 'a_b'"
    assert isinstance(message, str)
    assert message.render(untranslated) == message
    assert pickle.loads(pickle.dumps(message)).params == message.params


def test_a_message_is_translated_with_its_values() -> None:
    catalog = {
        "the %(what)s %(path)s is not a regular file": "%(what)s %(path)s 不是普通文件",
        "key file": "密钥文件",
    }
    message = Message(
        N_("the %(what)s %(path)s is not a regular file"),
        what=Message(N_("key file")),
        path="/s/key.pem",
    )
    assert message == "the key file /s/key.pem is not a regular file"
    assert message.render(lambda m: catalog.get(m, m)) == "密钥文件 /s/key.pem 不是普通文件"


def test_a_translation_that_breaks_a_placeholder_falls_back_to_english() -> None:
    message = Message(N_("deleted %(count)s file(s)"), count=3)
    assert message.render(lambda m: "已删除 %(number)s 个文件") == "deleted 3 file(s)"


def test_errors_keep_their_english_and_their_template() -> None:
    with pytest.raises(InvalidDomainError) as raised:
        normalize_domain("1.2.3.4")
    assert str(raised.value) == "invalid domain '1.2.3.4': an IP address, not a domain name"
    chinese = error_text(raised.value, lambda m: m.replace("invalid domain", "无效的域名"))
    assert chinese.startswith("无效的域名 '1.2.3.4'")
    assert error_text(ValueError("plain"), lambda m: "x") == "plain"


def test_labels_and_columns() -> None:
    assert label("error:", "x", "bold red") == "[bold red]error:[/] x"
    assert label("错误：", "x") == "错误：x"
    assert label("内部错误", "x") == "内部错误 x"
    assert width("健康状况：") == 10
    assert pad("健康状况：", 15) == "健康状况：     "
