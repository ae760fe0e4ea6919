"""``--lang``, and the help of ``blockwatch-probe`` in the volunteer's language.

Where this sits: between typer and the commands. The help texts are declared in
English, marked ``N_`` (extracted, not translated at import: the language is not
known yet, and ``measure`` starts without loading a catalog). ``LocalizedGroup``
chooses the language before it parses anything (``--lang`` before the command,
else the environment: ``probe_agent.i18n``) and, when it is not English, puts the
translations in the help of every command and option just built for this
invocation, so that ``--help``, a bare ``blockwatch-probe`` and a usage error
are in that language. English changes nothing.

typer's and click's own words (``Usage:``, ``[default: ...]``, click's error
messages) stay English, except the panel titles and ``--help``'s line, set here.

rich breaks a help text at spaces only and crops a longer run with an ellipsis;
Chinese has no spaces, so in another language than English the help texts are
folded at the column's edge instead (``fold_long_runs``: typer makes each help
text with ``rich_utils._make_rich_text``, typer being pinned below 0.29). The
commands are ``LocalizedCommand``s for that: ``@app.command(cls=LocalizedCommand)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from probe_agent import i18n
from probe_agent.protocol.messages import N_

LANG_OPTION = "--lang"
# The texts of typer and click that are shown translated (they are typer's msgids).
HELP_OPTION_HELP = N_("Show this message and exit.")
OPTIONS_PANEL = N_("Options")
ARGUMENTS_PANEL = N_("Arguments")
COMMANDS_PANEL = N_("Commands")


def lang_argument(args: list[str]) -> str | None:
    """The value of ``--lang`` among the options before the command, if given."""
    for i, arg in enumerate(args):
        if arg == LANG_OPTION:
            return args[i + 1] if i + 1 < len(args) else None
        if arg.startswith(LANG_OPTION + "="):
            return arg.partition("=")[2]
        if not arg.startswith("-"):
            return None  # the command: what follows is its own
    return None


class LocalizedGroup(TyperGroup):
    """The ``blockwatch-probe`` group: its help and its commands' in the language chosen."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if i18n.use(lang_argument(args)) != i18n.ENGLISH:
            for command in self._commands():
                translate_help(command, ctx)
        return super().parse_args(ctx, args)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        fold_long_runs()
        super().format_help(ctx, formatter)

    def _commands(self) -> Iterator[Any]:
        yield self
        yield from self.commands.values()


class LocalizedCommand(TyperCommand):
    """A command of the group, whose help folds long runs of Chinese (``fold_long_runs``)."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        fold_long_runs()
        super().format_help(ctx, formatter)


_folding = False


def fold_long_runs() -> None:
    """Have typer fold the help texts of a language other than English (once a process).

    Only when help is shown (``typer.rich_utils`` takes ~0.1 s to import); English
    keeps rich's default, which crops a word too long for its column.
    """
    global _folding  # noqa: PLW0603 (typer's module is patched once)
    if _folding or i18n.language() == i18n.ENGLISH:
        return
    from rich.text import Text  # noqa: PLC0415
    from typer import rich_utils  # noqa: PLC0415

    make = rich_utils._make_rich_text

    def folding(*, text: str, style: str = "", markup_mode: Any) -> Any:
        made = make(text=text, style=style, markup_mode=markup_mode)
        if isinstance(made, Text) and i18n.language() != i18n.ENGLISH:
            made.overflow = "fold"
        return made

    rich_utils._make_rich_text = folding
    _folding = True


def translate_help(command: Any, ctx: Any) -> None:
    """Put the translations in *command*'s help, its parameters' and its panels' titles."""
    gettext = i18n.gettext
    for name in ("help", "short_help", "epilog"):
        text = getattr(command, name, None)
        if text:
            setattr(command, name, gettext(text))
    for param in command.params:
        if isinstance(param, TyperOption | TyperArgument) and param.help:
            param.help = gettext(param.help)
        if isinstance(param, TyperArgument):
            param.rich_help_panel = param.rich_help_panel or gettext(ARGUMENTS_PANEL)
        elif isinstance(param, TyperOption):
            param.rich_help_panel = param.rich_help_panel or gettext(OPTIONS_PANEL)
    help_option = command.get_help_option(ctx)
    if help_option is not None:
        help_option.help = gettext(HELP_OPTION_HELP)
        help_option.rich_help_panel = gettext(OPTIONS_PANEL)
    if not isinstance(command, TyperGroup):
        command.rich_help_panel = command.rich_help_panel or gettext(COMMANDS_PANEL)
