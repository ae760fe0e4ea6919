"""The collector's languages: its gettext catalogs and how a language is chosen.

Pages (collector/api/pages.py) and alerts (collector/alerts/texts.py) read the
same catalogs (``collector/locale/<locale>/LC_MESSAGES/messages.mo``, compiled
by ``make locale`` from the ``.po`` files); a language without its catalog
shows English. Blockwatch's Chinese is Simplified (zh-Hans): readers of
Traditional Chinese read it too, so every ``zh`` tag gets it.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import resources
from pathlib import Path

from babel import Locale
from babel.support import NullTranslations, Translations

LANGUAGES = {"en": "English", "zh-Hans": "简体中文"}
DEFAULT_LANGUAGE = "en"
LOCALES = Path(str(resources.files("collector") / "locale"))

_TRANSLATIONS: dict[str, NullTranslations] = {}


def translations(language: str) -> NullTranslations:
    """The catalog of *language* (one of ``LANGUAGES``), loaded once."""
    if language not in _TRANSLATIONS:
        locale = language.replace("-", "_")
        _TRANSLATIONS[language] = Translations.load(str(LOCALES), [locale], domain="messages")
    return _TRANSLATIONS[language]


def supported(tag: str) -> str | None:
    """The language we have for a BCP 47 / ISO 639 tag (``zh-CN``, ``zh_TW``, ``EN``), or None."""
    primary = tag.strip().replace("_", "-").split("-")[0].lower()
    if primary == "zh":
        return "zh-Hans"
    if primary == "en":
        return "en"
    return None


def first_supported(tags: Iterable[str]) -> str | None:
    """The first of *tags* (in the order given: preference) that we have a language for."""
    for tag in tags:
        if isinstance(tag, str) and (language := supported(tag)) is not None:
            return language
    return None


def country_name(cc: str, language: str) -> str:
    """The country's name in *language* (CLDR, through Babel); the code if it has none."""
    locale = Locale.parse(language.replace("-", "_"))
    return str(locale.territories.get(cc.upper(), cc.upper()))
