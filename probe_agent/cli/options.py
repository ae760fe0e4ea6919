"""The options shared by ``measure`` and ``run``, and the engine configuration they make.

Where this sits in the data flow: between the command line and the engine. Both
commands measure with the same options (same names, same ``BLOCKWATCH_<OPTION>``
variables, same validation); they are declared once here so that they cannot
drift apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from probe_agent import i18n
from probe_agent.measure.engine import EngineConfig, Scheme
from probe_agent.measure.parallel import fd_bounded_concurrency, raise_fd_limit
from probe_agent.protocol.messages import N_, Message, label


def env(name: str) -> str:
    """The environment variable an option also reads: ``BLOCKWATCH_<NAME>``."""
    return f"BLOCKWATCH_{name}"


# The engine's options, shared by `measure` and `run` (same names, same variables).
ResolverOption = Annotated[
    list[str] | None,
    typer.Option(
        help=N_("Resolver IP[:PORT], repeatable. Default: the system resolver."),
        envvar=env("RESOLVER"),
    ),
]
InjectionSinkOption = Annotated[
    list[str] | None,
    typer.Option(
        help=N_("An IP[:PORT] that runs no resolver: any answer is injected."),
        envvar=env("INJECTION_SINK"),
    ),
]
CAFileOption = Annotated[
    Path | None,
    typer.Option(
        help=N_("Extra trusted CA bundle (PEM)."),
        envvar=env("CA_FILE"),
        exists=True,
        dir_okay=False,
        readable=True,
    ),
]
PortOption = Annotated[int, typer.Option(min=1, max=65535, envvar=env("PORT"))]
SchemeOption = Annotated[Scheme, typer.Option(envvar=env("SCHEME"))]
TimeoutOption = Annotated[
    float, typer.Option(min=0.1, max=120, help=N_("Seconds, per step."), envvar=env("TIMEOUT"))
]
ConcurrencyOption = Annotated[int, typer.Option(min=1, max=1024, envvar=env("CONCURRENCY"))]
DecoySNIOption = Annotated[
    str, typer.Option(help=N_("SNI of the control handshake."), envvar=env("DECOY_SNI"))
]
DecoyPoolOption = Annotated[
    list[str] | None,
    typer.Option(
        "--decoy-sni",
        help=N_(
            "A name for the SNI control, repeatable: each round draws one (default: the "
            "collector's pool, else a built-in pool of large sites reachable in mainland China)."
        ),
        envvar=env("DECOY_SNI"),
    ),
]
LabNetworkOption = Annotated[
    list[str] | None,
    typer.Option(
        help=N_("CIDR to treat as globally routable (labs and tests on loopback), repeatable."),
        envvar=env("LAB_NETWORK"),
    ),
]
StateDirOption = Annotated[
    Path,
    typer.Option(
        help=N_("Where the probe keeps its key and state (created 0700)."),
        envvar=env("STATE_DIR"),
        file_okay=False,
    ),
]


def bounded_concurrency(concurrency: int, config: EngineConfig) -> int:
    """*concurrency*, lowered (with a warning) to what the open-file limit allows."""
    fd_limit = raise_fd_limit()
    bounded = fd_bounded_concurrency(concurrency, config, fd_limit)
    if bounded < concurrency:
        warning = Message(
            N_(
                "--concurrency %(asked)s needs more open files than the limit (%(limit)s) "
                "allows; using %(bounded)s"
            ),
            asked=concurrency,
            limit=fd_limit,
            bounded=bounded,
        )
        text = label(i18n.gettext(N_("warning:")), i18n.render(warning), "yellow")
        Console(stderr=True).print(text)
    return bounded
