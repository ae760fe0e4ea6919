"""Messages a volunteer reads, kept translatable: English here, translated at the door.

Where this sits: under everything that words a message for a volunteer (input
validation, the state's refusals, the evidence checks, the CLI). The rooms below
the CLI speak English, because the collector validates with the same functions
and logs stay English; but what may reach a volunteer is written as an English
*template* with named placeholders (``"invalid domain %(raw)r: empty name"``),
marked with ``N_`` so that ``pybabel extract`` (babel-probe.cfg) finds it, and
kept with its values in a ``Message``. A ``Message`` *is* its English text (a
``str``: ``str(error)``, comparisons and logs see nothing new), and
``render(gettext)`` gives it in the volunteer's language: the CLI does that with
``probe_agent.i18n`` and nobody else.

Placeholders are named (``%(name)s``) so that a translation may reorder them;
a translation that breaks them falls back to the English, never to an error.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from typing import Any

Translate = Callable[[str], str]


def N_(template: str) -> str:
    """Mark *template* for extraction; it is translated where it is shown."""
    return template


def untranslated(template: str) -> str:
    """The ``Translate`` that keeps the English (the default everywhere below the CLI)."""
    return template


class Message(str):
    """English text that keeps its template and values, to be shown translated.

    ``Message(N_("bad label %(label)r"), label="a_b")`` equals the string
    ``"bad label 'a_b'"``; a value may itself be a ``Message`` (it is translated
    along). ``render(gettext)`` is the text in *gettext*'s language.
    """

    template: str
    params: dict[str, Any]

    def __new__(cls, template: str, /, **params: Any) -> Message:
        self = super().__new__(cls, template % params if params else template)
        self.template = template
        self.params = params
        return self

    def render(self, gettext: Translate) -> str:
        if gettext is untranslated:
            return str(self)
        values = {name: translated(value, gettext) for name, value in self.params.items()}
        text = gettext(self.template)
        if not values:
            return text
        try:
            return text % values
        except (KeyError, ValueError, TypeError):  # a translation that broke a placeholder
            return self.template % values


def translated(value: object, gettext: Translate) -> object:
    """*value* in *gettext*'s language when it is a ``Message``; else *value* itself."""
    return value.render(gettext) if isinstance(value, Message) else value


def error_text(error: BaseException, gettext: Translate) -> str:
    """An exception's message in *gettext*'s language (its English when it has no template)."""
    if len(error.args) == 1 and isinstance(error.args[0], Message):
        return error.args[0].render(gettext)
    return str(error)


def width(text: str) -> int:
    """The columns *text* takes in a terminal (a CJK character takes two)."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def label(text: str, message: str, markup: str = "") -> str:
    """*text* (``error:``), styled with rich *markup* (``bold red``), before *message*.

    A space between them, except after full-width punctuation (a Chinese colon),
    which has its own."""
    styled = f"[{markup}]{text}[/]" if markup else text
    last = text[-1:]
    spaced = not (last and width(last) == 2 and unicodedata.category(last).startswith("P"))
    return styled + (" " if spaced else "") + message


def pad(text: str, columns: int) -> str:
    """*text* followed by spaces up to *columns* terminal columns."""
    return text + " " * max(0, columns - width(text))
