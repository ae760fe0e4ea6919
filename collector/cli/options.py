"""``serve``'s options, derived from ``CollectorSettings`` (collector/core/settings.py).

Data flow: command line and ``BLOCKWATCH_*`` -> typer/click (parsing, ranges,
switches) -> the values actually given -> ``CollectorSettings`` -> ``serve``.

Each field marked ``Cli`` becomes one typer option: its flag, variable, help text
(the field's description), bounds (``ge``/``le`` as click ranges; ``gt``/``lt``
are left to the model) and type come from the field. Why typer parameters built
from the model rather than pydantic-settings' own command-line source
(``CliSettingsSource``): that one parses with argparse, so ``serve`` would be an
argparse program inside a typer app, with its own help layout, switch spelling
(``--flag``/``--no-flag`` become ``--flag true``-style or need per-field
configuration), messages and exit statuses, and typer would have to pass it the
raw arguments untouched. Built as typer parameters, ``serve`` parses, helps and
fails like the other commands, and the model is still the one place an option is
declared.

Only values given on the command line or through an option's variable reach the
model: any other field keeps its default, or its ``BLOCKWATCH_<FIELD>`` variable
read by pydantic-settings (so both names work where they differ, e.g.
``BLOCKWATCH_RESIDUAL`` and ``BLOCKWATCH_RESIDUAL_SECONDS``).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterator
from typing import Annotated, Any

import annotated_types
import typer
from pydantic import BeforeValidator, SecretStr, ValidationError
from pydantic.fields import FieldInfo

from collector.cli.common import EXIT_INVALID, err
from collector.core.settings import DURATION_VALIDATORS, Cli, CollectorSettings, Mode

# click's ParameterSource names (typer vendors its own click: compared by name).
GIVEN = frozenset({"COMMANDLINE", "ENVIRONMENT"})


def cli_fields() -> dict[str, tuple[FieldInfo, Cli]]:
    """The settings that are options of ``serve``, in the model's order."""
    found = {}
    for name, info in CollectorSettings.model_fields.items():
        marks = [m for m in info.metadata if isinstance(m, Cli)]
        if marks:
            found[name] = (info, marks[0])
    return found


def flag(name: str, cli: Cli) -> str:
    return cli.flag or "--" + name.replace("_", "-")


def variable(name: str, cli: Cli) -> str:
    return cli.env or f"BLOCKWATCH_{name.upper()}"


def option(name: str) -> Any:
    """The typer option of setting *name* (for ``Annotated[..., option(name)]``)."""
    info, cli = cli_fields()[name]
    declaration = flag(name, cli)
    if _base_type(info.annotation) is bool:
        declaration += "/--no-" + declaration.removeprefix("--")
    bounds = {type(m): m for m in info.metadata}
    return typer.Option(
        declaration,
        envvar=variable(name, cli),
        help=info.description,
        min=getattr(bounds.get(annotated_types.Ge), "ge", None),
        max=getattr(bounds.get(annotated_types.Le), "le", None),
    )


def settings_command(run: Callable[[CollectorSettings], None]) -> Callable[..., None]:
    """A typer command whose options are the settings; it hands the built settings to *run*."""

    def command(ctx: typer.Context, **values: Any) -> None:
        run(build_settings(ctx, values))

    parameters = [
        inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)
    ]
    parameters += [_parameter(name, info) for name, (info, _) in cli_fields().items()]
    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    command.__doc__ = run.__doc__
    command.__name__ = run.__name__
    return command


def build_settings(ctx: typer.Context, values: dict[str, Any]) -> CollectorSettings:
    """The settings from the options given (command line or variable) and the environment."""
    given = {
        name: _to_field(cli, values[name])
        for name, (_, cli) in cli_fields().items()
        if getattr(ctx.get_parameter_source(name), "name", None) in GIVEN
    }
    return make_settings(**given)


def make_settings(**values: Any) -> CollectorSettings:
    """``CollectorSettings(**values)``; an invalid value is reported, exit status 2."""
    try:
        return CollectorSettings(**values)
    except ValidationError as exc:
        err.print(f"[bold red]error:[/] {_describe(exc)}", highlight=False)
        raise typer.Exit(EXIT_INVALID) from None


def admin_settings(database_url: str | None) -> CollectorSettings:
    """Settings for an administration command: the database is all it needs (no admin token)."""
    overrides: dict[str, Any] = {"mode": Mode.LAB}
    if database_url is not None:
        overrides["database_url"] = database_url
    return make_settings(**overrides)


def _parameter(name: str, info: FieldInfo) -> inspect.Parameter:
    base = _base_type(info.annotation)
    cli_type: Any
    if base is bool:
        cli_type = bool
    elif cli_fields()[name][1].repeat:
        cli_type = list[str] | None
    elif _is_duration(info) or base is SecretStr:
        cli_type = str | None  # the model parses it
    else:
        cli_type = base | None
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=_shown_default(info),
        annotation=Annotated[cli_type, option(name)],
    )


def _to_field(cli: Cli, value: Any) -> Any:
    if cli.negate:
        return not value
    if cli.repeat:
        return ",".join(value)
    return value


def _describe(exc: ValidationError) -> str:
    """The first error, named by its option (or variable), as the operator wrote it."""
    first = exc.errors()[0]
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    loc = first.get("loc") or ()
    if not loc:
        return message
    name = str(loc[0])
    known = cli_fields().get(name)
    where = flag(name, known[1]) if known else f"BLOCKWATCH_{name.upper()}"
    return f"{where} ({name}): {message}"


def _shown_default(info: FieldInfo) -> Any:
    """The default --help shows: only shown, never used (a value not given stays unset)."""
    default = info.default
    if isinstance(default, bool):
        return False  # a switch given is on (--no-detector included)
    if default in (None, "") or isinstance(default, SecretStr):
        return None
    return f"{default:g}s" if _is_duration(info) else default


def _base_type(annotation: Any) -> Any:
    """``X`` of ``X``, ``X | None`` or ``Annotated[X, ...]``."""
    if typing.get_origin(annotation) is Annotated:
        return _base_type(typing.get_args(annotation)[0])
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if args and type(None) in typing.get_args(annotation):
        return _base_type(args[0])
    return annotation


def _validators(annotation: Any) -> Iterator[Any]:
    for arg in typing.get_args(annotation):
        if isinstance(arg, BeforeValidator):
            yield arg.func
        yield from _validators(arg)


def _is_duration(info: FieldInfo) -> bool:
    found = [m.func for m in info.metadata if isinstance(m, BeforeValidator)]
    found += _validators(info.annotation)
    return any(func in DURATION_VALIDATORS for func in found)


# The administration commands' --database-url: the setting's own option.
DatabaseUrl = Annotated[str | None, option("database_url")]
