"""``blockwatch-probe``: the volunteer's command line (DESIGN.md "Public interfaces").

Every option also reads ``BLOCKWATCH_<OPTION>`` from the environment. Invalid
input exits with status 2 before any packet is sent; a domain the engine could
not measure because of an internal error exits 1 after the others are done.
"""

from __future__ import annotations

import asyncio
import csv
import gc
import io
import logging
import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from probe_agent import __version__
from probe_agent.dnsprobe import DNSSettings
from probe_agent.engine import (
    DEFAULT_DECOY_SNI,
    DomainError,
    Engine,
    EngineConfig,
    Result,
    StopMeasuring,
)
from probe_agent.errors import InvalidInputError, InvalidOptionError
from probe_agent.httpprobe import HTTPSettings
from probe_agent.inputs import normalize_domain, parse_endpoint, parse_network, system_resolvers
from probe_agent.observations import Measurement
from probe_agent.parallel import (
    auto_workers,
    fd_bounded_concurrency,
    measure_in_processes,
    raise_fd_limit,
)
from probe_agent.render import build_table, to_json_line

app = typer.Typer(
    name="blockwatch-probe",
    help="Measure fediverse instances for signs of blocking (DNS, TCP, TLS, HTTP).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
log = logging.getLogger("blockwatch.probe")
EXIT_INVALID_INPUT = 2


class OutputFormat(StrEnum):
    JSONL = "jsonl"
    TABLE = "table"


class Scheme(StrEnum):
    HTTPS = "https"
    HTTP = "http"


def _env(name: str) -> str:
    return f"BLOCKWATCH_{name}"


def _read_domain_file(path: Path) -> list[str]:
    """One domain a line, or a CSV whose header has a ``domain`` column."""
    text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if lines and "," in lines[0] and "domain" in [c.strip() for c in lines[0].split(",")]:
        return [row["domain"] for row in csv.DictReader(io.StringIO("\n".join(lines)))]
    return [line.strip() for line in lines]


def _fail(message: str) -> typer.Exit:
    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(EXIT_INVALID_INPUT)


@app.command()
def measure(
    domains: Annotated[list[str] | None, typer.Argument(help="Domains to measure.")] = None,
    resolver: Annotated[
        list[str] | None,
        typer.Option(
            help="Resolver IP[:PORT], repeatable. Default: the system resolver.",
            envvar=_env("RESOLVER"),
        ),
    ] = None,
    injection_sink: Annotated[
        list[str] | None,
        typer.Option(
            help="An IP[:PORT] that runs no resolver: any answer is injected.",
            envvar=_env("INJECTION_SINK"),
        ),
    ] = None,
    ca_file: Annotated[
        Path | None,
        typer.Option(
            help="Extra trusted CA bundle (PEM).",
            envvar=_env("CA_FILE"),
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ] = None,
    port: Annotated[int, typer.Option(min=1, max=65535, envvar=_env("PORT"))] = 443,
    scheme: Annotated[Scheme, typer.Option(envvar=_env("SCHEME"))] = Scheme.HTTPS,
    timeout: Annotated[
        float, typer.Option(min=0.1, max=120, help="Seconds, per step.", envvar=_env("TIMEOUT"))
    ] = 10.0,
    concurrency: Annotated[int, typer.Option(min=1, max=1024, envvar=_env("CONCURRENCY"))] = 32,
    workers: Annotated[
        int,
        typer.Option(
            min=0,
            max=64,
            help="Processes to spread a long list over (0: one per 200 domains, up to the "
            "number of CPUs).",
            envvar=_env("WORKERS"),
        ),
    ] = 0,
    decoy_sni: Annotated[
        str, typer.Option(help="SNI of the control handshake.", envvar=_env("DECOY_SNI"))
    ] = DEFAULT_DECOY_SNI,
    lab_network: Annotated[
        list[str] | None,
        typer.Option(
            help="CIDR to treat as globally routable (labs and tests on loopback), repeatable.",
            envvar=_env("LAB_NETWORK"),
        ),
    ] = None,
    input_file: Annotated[
        Path | None,
        typer.Option(
            "--input",
            help="File of domains (one a line, or CSV with 'domain'); - for stdin.",
            envvar=_env("INPUT"),
        ),
    ] = None,
    output_format: Annotated[
        OutputFormat, typer.Option("--format", envvar=_env("FORMAT"))
    ] = OutputFormat.JSONL,
) -> None:
    """Measure DOMAIN... once and print the observations (no collector involved)."""
    raw_domains = list(domains or [])
    try:
        if input_file is not None:
            raw_domains += _read_domain_file(input_file)
        if not raw_domains:
            raise InvalidOptionError("no domain given")
        names = list(dict.fromkeys(normalize_domain(d) for d in raw_domains))
        resolvers = (
            tuple(parse_endpoint(r) for r in resolver) if resolver else tuple(system_resolvers())
        )
        sinks = tuple(parse_endpoint(s) for s in injection_sink or ())
        decoy = normalize_domain(decoy_sni)
        lab_networks = tuple(parse_network(n) for n in lab_network or ())
    except (InvalidInputError, OSError, UnicodeDecodeError, csv.Error, KeyError) as exc:
        raise _fail(str(exc)) from None
    config = EngineConfig(
        resolvers=resolvers,
        injection_sinks=sinks,
        port=port,
        scheme=scheme.value,
        decoy_sni=decoy,
        timeout=timeout,
        ca_file=str(ca_file) if ca_file else None,
        lab_networks=lab_networks,
        dns=DNSSettings(timeout=timeout),
        http=HTTPSettings(timeout=timeout),
    )
    fd_limit = raise_fd_limit()
    bounded = fd_bounded_concurrency(concurrency, config, fd_limit)
    if bounded < concurrency:
        Console(stderr=True).print(
            f"[yellow]warning:[/] --concurrency {concurrency} needs more open files than the "
            f"limit ({fd_limit}) allows; using {bounded}"
        )
    failed = _run_measure(
        config, names, bounded, workers or auto_workers(len(names)), output_format
    )
    raise typer.Exit(1 if failed else 0)


def _run_measure(
    config: EngineConfig,
    names: list[str],
    concurrency: int,
    workers: int,
    output_format: OutputFormat,
) -> int:
    collected: list[Measurement] = []
    errors: list[DomainError] = []
    err_console = Console(stderr=True)

    def on_result(result: Result) -> None:
        if isinstance(result, DomainError):
            errors.append(result)
            err_console.print(
                f"[bold red]internal error[/] measuring {result.domain}: "
                f"{type(result.error).__name__}: {result.error}",
                highlight=False,
            )
        elif output_format is OutputFormat.JSONL:
            try:
                sys.stdout.write(to_json_line(result) + "\n")
                sys.stdout.flush()
            except BrokenPipeError:
                # The reader went away (`| head -1`): stop quietly, and keep Python's
                # final flush from raising again at exit.
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                raise StopMeasuring from None
        else:
            collected.append(result)

    def run() -> None:
        if workers > 1:
            measure_in_processes(config, names, concurrency, workers, on_result)
        else:
            asyncio.run(Engine(config).measure_all(names, concurrency, on_result))

    if output_format is OutputFormat.TABLE and err_console.is_terminal:
        with err_console.status(f"measuring {len(names)} domain(s)..."):
            run()
    else:
        run()
    if output_format is OutputFormat.TABLE:
        order = {name: i for i, name in enumerate(names)}
        collected.sort(key=lambda m: order[m.domain])
        Console().print(build_table(collected))
    return len(errors)


@app.command()
def version() -> None:
    """Print the probe's version."""
    typer.echo(f"blockwatch-probe {__version__}")


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # A measurement allocates thousands of short-lived objects and few cycles: a
    # rarer young-generation collection saves ~5% CPU on long lists.
    gc.set_threshold(20_000, 50, 100)
    app()
