"""The probe's languages: English (the code's own) and Simplified Chinese (zh-Hans), by gettext.

Where this sits: at the door. Only the CLI (``probe_agent.cli``) speaks to a
volunteer, so only it imports this module; the rooms below word their messages
in English as translatable ``Message``s (``probe_agent.protocol.messages``) and
the CLI renders them here. Nothing below the CLI depends on the language, and
the collector, which validates with the same functions, never sees it.

Which language, the first that says one:

1. ``blockwatch-probe --lang LANG`` (before the command);
2. ``BLOCKWATCH_LANG``: ``en`` or ``zh-Hans`` (``zh``, ``zh_CN``, ``zh-TW``...
   are read as zh-Hans, the only Chinese there is);
3. the POSIX variables, as gettext reads them: the first of ``LANGUAGE``
   (a list, ``zh_CN:en``), ``LC_ALL``, ``LC_MESSAGES``, ``LANG`` that is set
   (``LANG=zh_CN.UTF-8`` gives Chinese, ``C`` English);
4. English. A language without a catalog is English too.

The catalog is domain ``probe``: ``probe_agent/locale/<locale>/LC_MESSAGES/probe.mo``
next to this file, compiled from its ``.po`` by ``make`` (babel-probe.cfg, ``make
locale``) and shipped in the wheel. It is loaded at the first message, with one
``gettext.translation`` call; English loads nothing, and a missing or broken
catalog is English, never an error.

What stays English whatever the language: machine output (``measure``'s JSON
lines, ``status --json``, exit statuses), the log and the daemon's lines on
stderr (they are pasted into bug reports), and codes (``err_...``, failure
strings, hints, a way's kind).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path

from probe_agent.protocol.messages import Translate, error_text, translated, untranslated

DOMAIN = "probe"
LOCALE_DIR = Path(__file__).resolve().parent / "locale"
ENGLISH, CHINESE = "en", "zh-Hans"
# Each language the probe speaks, and the directory of its catalog under LOCALE_DIR.
CATALOGS: dict[str, str | None] = {ENGLISH: None, CHINESE: "zh_Hans"}
ENVIRONMENT = "BLOCKWATCH_LANG"
POSIX_VARIABLES = ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG")  # gettext's order

_chosen: str | None = None  # None: not chosen yet (the environment decides at first use)


def normalize(tag: str) -> str | None:
    """A language tag or POSIX locale as one of ``CATALOGS``; None when it names none.

    ``zh_CN.UTF-8``, ``zh-TW``, ``zh`` -> ``zh-Hans``; ``en_GB``, ``C``, ``POSIX`` -> ``en``.
    """
    base = tag.strip().split(".")[0].split("@")[0].replace("_", "-").lower()
    if base in ("c", "posix", "en") or base.startswith("en-"):
        return ENGLISH
    if base == "zh" or base.startswith("zh-"):
        return CHINESE
    return None


def choose(environ: Mapping[str, str] | None = None) -> str:
    """The language the environment asks for (``BLOCKWATCH_LANG``, then POSIX), else English."""
    env = os.environ if environ is None else environ
    explicit = env.get(ENVIRONMENT, "").strip()
    if explicit:
        return normalize(explicit) or ENGLISH
    for name in POSIX_VARIABLES:
        value = env.get(name, "").strip()
        if value:  # the first one set decides, as for gettext
            for entry in value.split(":"):
                found = normalize(entry) if entry else None
                if found is not None:
                    return found
            return ENGLISH
    return ENGLISH


def use(language: str | None = None) -> str:
    """Speak *language* from now on (None: what the environment asks for); the one used."""
    global _chosen  # noqa: PLW0603 (one language a process, as gettext's own)
    _chosen = (normalize(language) or ENGLISH) if language else choose()
    return _chosen


def language() -> str:
    """The language spoken: chosen by ``use``, else the environment's."""
    return _chosen if _chosen is not None else use()


@functools.cache
def catalog(language: str) -> Translate:
    """The translation function of *language*: its catalog's, or the English."""
    directory = CATALOGS.get(language)
    if directory is None:
        return untranslated
    import gettext  # noqa: PLC0415 (only a volunteer who reads another language pays for it)

    try:
        return gettext.translation(DOMAIN, LOCALE_DIR, languages=[directory]).gettext
    except Exception:
        return untranslated


def gettext(message: str) -> str:
    """*message* (an English msgid) in the language spoken."""
    return catalog(language())(message)


def render(text: object) -> str:
    """*text* in the language spoken: a ``Message`` translated, anything else as ``str``."""
    return str(translated(text, gettext))


def error(exc: BaseException) -> str:
    """An exception's message in the language spoken (its English when it has no template)."""
    return error_text(exc, gettext)
