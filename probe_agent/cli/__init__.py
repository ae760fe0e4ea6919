"""``blockwatch-probe``: the volunteer's command line (docs/architecture.md, "Public interfaces").

Every option also reads ``BLOCKWATCH_<OPTION>`` from the environment. Invalid
input exits with status 2 before any packet is sent; a domain the engine could
not measure because of an internal error exits 1 after the others are done.
``run --once`` (one round for a collector, ``daemon.round``) exits 0 when every
measurement was stored, 1 otherwise, 2 for invalid input or an unsafe key file;
``id`` prints the key fingerprint.

What a volunteer reads (help, errors, warnings, ``status``, ``verify``) is in
the language ``--lang`` or the environment chooses (``probe_agent.i18n``,
``cli.language``); machine output, exit statuses and the log stay English.
"""

from __future__ import annotations

import asyncio
import csv
import gc
import io
import ipaddress
import logging
import os
import sys
import urllib.parse
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from probe_agent import __version__, i18n
from probe_agent.cli import verify
from probe_agent.cli.language import LANG_OPTION, LocalizedCommand, LocalizedGroup
from probe_agent.cli.options import (
    CAFileOption,
    ConcurrencyOption,
    DecoyPoolOption,
    DecoySNIOption,
    InjectionSinkOption,
    LabNetworkOption,
    PortOption,
    ResolverOption,
    SchemeOption,
    StateDirOption,
    TimeoutOption,
    bounded_concurrency,
)
from probe_agent.cli.options import env as _env
from probe_agent.cli.render import build_table, to_json_line
from probe_agent.measure.engine import (
    DEFAULT_DECOY_SNI,
    DomainError,
    Engine,
    EngineConfig,
    Result,
    Scheme,
    StopMeasuring,
    engine_config,
)
from probe_agent.measure.observations import Measurement
from probe_agent.measure.parallel import (
    auto_workers,
    measure_in_processes,
)
from probe_agent.protocol.errors import IdentityError, InvalidInputError, InvalidOptionError
from probe_agent.protocol.inputs import (
    MAX_ASN,
    MIN_ASN,
    normalize_domain,
    parse_collector_url,
    parse_declared,
    parse_duration,
    parse_region,
)
from probe_agent.protocol.messages import N_, Message, label
from probe_agent.state.identity import DEFAULT_STATE_DIR, key_id, load_or_create_key

if TYPE_CHECKING:  # imported where used: `measure` starts faster without aiohttp
    from probe_agent.daemon.loop import DaemonOptions
    from probe_agent.daemon.round import RunOptions

app = typer.Typer(
    name="blockwatch-probe",
    help=N_("Measure fediverse instances for signs of blocking (DNS, TCP, TLS, HTTP)."),
    cls=LocalizedGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
log = logging.getLogger("blockwatch.probe")
EXIT_INVALID_INPUT = 2


class LogLevel(StrEnum):
    WARNING = "warning"
    INFO = "info"
    DEBUG = "debug"


class Role(StrEnum):
    PROBE = "probe"
    CONTROL = "control"


class OutputFormat(StrEnum):
    JSONL = "jsonl"
    TABLE = "table"


def _read_domain_file(path: Path) -> list[str]:
    """One domain a line, or a CSV whose header has a ``domain`` column."""
    text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if lines and "," in lines[0] and "domain" in [c.strip() for c in lines[0].split(",")]:
        return [row["domain"] for row in csv.DictReader(io.StringIO("\n".join(lines)))]
    return [line.strip() for line in lines]


def _fail(message: Message | Exception) -> typer.Exit:
    """Print *message* (an exception's, a ``Message``) as an error; exit 2."""
    _error(message)
    return typer.Exit(EXIT_INVALID_INPUT)


def _error(message: Message | Exception) -> None:
    text = i18n.error(message) if isinstance(message, Exception) else i18n.render(message)
    line = label(i18n.gettext(N_("error:")), text, "bold red")
    Console(stderr=True).print(line, highlight=False)


def _warn(message: Message) -> None:
    Console(stderr=True).print(label(i18n.gettext(N_("warning:")), i18n.render(message), "yellow"))


def _say(message: Message) -> None:
    """A line for the volunteer on stderr (stdout is for what scripts read)."""
    Console(stderr=True).print(i18n.render(message), highlight=False)


@app.callback()
def _options(
    lang: Annotated[
        str | None,
        typer.Option(
            LANG_OPTION,
            help=N_(
                "Language of the messages: en or zh-Hans (before the command). Default: "
                "BLOCKWATCH_LANG, else LANGUAGE, LC_ALL, LC_MESSAGES or LANG, else English."
            ),
            envvar=_env("LANG"),
            metavar="LANG",
        ),
    ] = None,
) -> None:
    # The group read --lang before parsing, to translate the help (cli.language).
    del lang


@app.command(
    cls=LocalizedCommand,
    help=N_("Measure DOMAIN... once and print the observations (no collector involved)."),
)
def measure(
    domains: Annotated[list[str] | None, typer.Argument(help=N_("Domains to measure."))] = None,
    resolver: ResolverOption = None,
    injection_sink: InjectionSinkOption = None,
    ca_file: CAFileOption = None,
    port: PortOption = 443,
    scheme: SchemeOption = Scheme.HTTPS,
    timeout: TimeoutOption = 10.0,
    concurrency: ConcurrencyOption = 32,
    workers: Annotated[
        int,
        typer.Option(
            min=0,
            max=64,
            help=N_(
                "Processes to spread a long list over (0: one per 200 domains, up to the "
                "number of CPUs)."
            ),
            envvar=_env("WORKERS"),
        ),
    ] = 0,
    decoy_sni: DecoySNIOption = DEFAULT_DECOY_SNI,
    lab_network: LabNetworkOption = None,
    input_file: Annotated[
        Path | None,
        typer.Option(
            "--input",
            help=N_("File of domains (one a line, or CSV with 'domain'); - for stdin."),
            envvar=_env("INPUT"),
        ),
    ] = None,
    output_format: Annotated[
        OutputFormat, typer.Option("--format", envvar=_env("FORMAT"))
    ] = OutputFormat.JSONL,
) -> None:
    raw_domains = list(domains or [])
    try:
        if input_file is not None:
            raw_domains += _read_domain_file(input_file)
        if not raw_domains:
            raise InvalidOptionError(N_("no domain given"))
        names = list(dict.fromkeys(normalize_domain(d) for d in raw_domains))
        config = engine_config(
            resolver=resolver,
            injection_sink=injection_sink,
            ca_file=ca_file,
            port=port,
            scheme=scheme,
            timeout=timeout,
            decoy_sni=decoy_sni,
            lab_network=lab_network,
        )
    except (InvalidInputError, OSError, UnicodeDecodeError, csv.Error, KeyError) as exc:
        raise _fail(exc) from None
    bounded = bounded_concurrency(concurrency, config)
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
            text = Message(
                N_("measuring %(domain)s: %(error)s"),
                domain=result.domain,
                error=f"{type(result.error).__name__}: {result.error}",
            )
            line = label(i18n.gettext(N_("internal error")), i18n.render(text), "bold red")
            err_console.print(line, highlight=False)
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
        spinner = Message(N_("measuring %(count)s domain(s)..."), count=len(names))
        with err_console.status(i18n.render(spinner)):
            run()
    else:
        run()
    if output_format is OutputFormat.TABLE:
        order = {name: i for i, name in enumerate(names)}
        collected.sort(key=lambda m: order[m.domain])
        Console().print(build_table(collected, i18n.gettext))
    return len(errors)


# Shared by `run` and `rotate-key`.
CollectorOption = Annotated[
    list[str] | None,
    typer.Option(
        help=N_("Collector base URL (https://...), repeatable: tried in order."),
        envvar=_env("COLLECTOR"),
    ),
]
CollectorTimeoutOption = Annotated[
    float,
    typer.Option(
        min=0.1,
        max=600,
        help=N_("Seconds, per collector request."),
        envvar=_env("COLLECTOR_TIMEOUT"),
    ),
]
ProxyOption = Annotated[
    str | None,
    typer.Option(
        help=N_(
            "Reach the collector only through this proxy: socks5://host:port (Tor: "
            "socks5://127.0.0.1:9050) or http://host:port. The proxy resolves its name."
        ),
        envvar=_env("PROXY"),
    ),
]


@app.command(
    cls=LocalizedCommand,
    help=N_("Check in with the collector, measure the targets it hands out, sign and submit."),
)
def run(
    collector: CollectorOption = None,
    enroll_token: Annotated[
        str | None,
        typer.Option(
            help=N_(
                "Enrollment token from the collector's admin (bwt_..., with the "
                "collector key's fingerprint after a dot: the probe then trusts only that "
                "collector key). Prefer the environment variable: other users can read "
                "command lines."
            ),
            envvar=_env("ENROLL_TOKEN"),
        ),
    ] = None,
    state_dir: StateDirOption = DEFAULT_STATE_DIR,
    cc: Annotated[
        str | None,
        typer.Option(
            "--cc",
            help=N_(
                "Declared country (ISO 3166-1 alpha-2), used when the collector cannot "
                "geolocate this probe. With --asn."
            ),
            envvar=_env("CC"),
        ),
    ] = None,
    asn: Annotated[
        int | None,
        typer.Option(
            min=MIN_ASN,
            max=MAX_ASN,
            help=N_("Declared AS number. With --cc."),
            envvar=_env("ASN"),
        ),
    ] = None,
    region: Annotated[
        str | None,
        typer.Option(
            "--region",
            help=N_(
                "Declared region (ISO 3166-2, e.g. CN-HA for Henan): where in its country "
                "this probe measures. Counts once the operator vouches for it."
            ),
            envvar=_env("REGION"),
        ),
    ] = None,
    once: Annotated[
        bool,
        typer.Option(
            "--once", help=N_("One round, then exit (0: all submitted)."), envvar=_env("ONCE")
        ),
    ] = False,
    collector_timeout: CollectorTimeoutOption = 30.0,
    proxy: ProxyOption = None,
    collector_pin: Annotated[
        str | None,
        typer.Option(
            help=N_(
                "Pin the collector's certificate key: base64 SHA-256 of its "
                "SubjectPublicKeyInfo. A certificate without that key fails the handshake, "
                "whoever issued it."
            ),
            envvar=_env("COLLECTOR_PIN"),
        ),
    ] = None,
    collector_doh: Annotated[
        str | None,
        typer.Option(
            help=N_(
                "A DNS-over-HTTPS server (https://IP/dns-query) to resolve the collector's "
                "name with when the other ways fail (its answer from the system resolver may "
                "be forged). Off by default; not used through --proxy."
            ),
            envvar=_env("COLLECTOR_DOH"),
        ),
    ] = None,
    public_evidence: Annotated[
        bool,
        typer.Option(
            "--public-evidence",
            help=N_(
                "Let this probe's signed measurements, with their exact times, be "
                "published in evidence bundles anyone can download, once the network they "
                "come from has enough volunteers (the collector's --publish-min-volunteers). "
                "Off by default: they then only reach the operator and the instance's admins."
            ),
            envvar=_env("PUBLIC_EVIDENCE"),
        ),
    ] = False,
    log_level: Annotated[
        LogLevel,
        typer.Option(
            help=N_(
                "warning (default) and info log counts only; debug logs domains and "
                "addresses: for labs, not for a volunteer's machine."
            ),
            envvar=_env("LOG_LEVEL"),
        ),
    ] = LogLevel.WARNING,
    interval: Annotated[
        str | None,
        typer.Option(
            help=N_("Time between rounds (30s, 5m), overriding the collector's."),
            envvar=_env("INTERVAL"),
        ),
    ] = None,
    retest_spacing: Annotated[
        str | None,
        typer.Option(
            help=N_(
                "Least time between two measurements of one address and port "
                "(default: the collector's, 180s)."
            ),
            envvar=_env("RETEST_SPACING"),
        ),
    ] = None,
    resolver: ResolverOption = None,
    injection_sink: InjectionSinkOption = None,
    ca_file: CAFileOption = None,
    port: PortOption = 443,
    scheme: SchemeOption = Scheme.HTTPS,
    timeout: TimeoutOption = 10.0,
    concurrency: ConcurrencyOption = 32,
    decoy_sni: DecoyPoolOption = None,
    lab_network: LabNetworkOption = None,
    role: Annotated[
        Role,
        typer.Option(
            help=N_(
                "probe (a volunteer in a censored network), or control: an uncensored "
                "vantage whose measurements are the control (needs a control enrollment token)."
            ),
            envvar=_env("ROLE"),
        ),
    ] = Role.PROBE,
) -> None:
    # The collector client pulls in aiohttp: only `run` needs it, and `measure`
    # (which may fork workers) starts faster and smaller without it.
    from probe_agent.daemon.round import RunOptions  # noqa: PLC0415
    from probe_agent.daemon.tactics import parse_pin  # noqa: PLC0415

    _set_log_level(log_level)
    try:  # every option is checked before anything is sent
        daemon = _daemon_options(interval, retest_spacing)
        collectors = _collectors(collector)
        declared = parse_declared(cc, asn)
        declared_region = parse_region(region, cc)
        proxy_url = parse_proxy_url(proxy) if proxy else None
        token, anchor = _split_token(enroll_token)
        pin = parse_pin(collector_pin) if collector_pin else None
        doh = _doh_url(collector_doh)
        pool = tuple(normalize_domain(name) for name in decoy_sni or ())
        config = engine_config(
            resolver=resolver,
            injection_sink=injection_sink,
            ca_file=ca_file,
            port=port,
            scheme=scheme,
            timeout=timeout,
            decoy_sni=DEFAULT_DECOY_SNI,  # each round draws its own (daemon.round)
            lab_network=lab_network,
        )
        _check_ca_file(config.ca_file)
    except InvalidInputError as exc:
        raise _fail(exc) from None
    _warn_plain_http(collectors)
    options = RunOptions(
        collectors=collectors,
        state_dir=state_dir,
        engine=config,
        concurrency=bounded_concurrency(concurrency, config),
        enroll_token=token,
        collector_anchor=anchor,
        collector_pin=pin,
        collector_doh=doh,
        decoys=pool,
        declared=declared,
        region=declared_region,
        collector_timeout=collector_timeout,
        proxy=proxy_url,
        role=role.value,
        public_evidence=public_evidence,
    )
    raise typer.Exit(_start(options, None if once else daemon))


def _doh_url(text: str | None) -> str | None:
    if text is None:
        return None
    url = parse_collector_url(text)
    if not url.startswith("https://"):
        raise InvalidOptionError(N_("invalid --collector-doh: DNS-over-HTTPS needs https://"))
    return url


def _split_token(text: str | None) -> tuple[str | None, str | None]:
    """``bwt_<secret>.<collector key prefix>``: (the token, the anchor)."""
    if text is None:
        return None, None
    from probe_agent.state.reach import split_token  # noqa: PLC0415

    try:
        return split_token(text)
    except ValueError as exc:
        raise InvalidOptionError(
            N_("invalid --enroll-token: %(reason)s"), reason=exc.args[0] if exc.args else ""
        ) from None


def _set_log_level(log_level: LogLevel) -> None:
    logging.getLogger("blockwatch").setLevel(log_level.value.upper())
    if log_level is LogLevel.DEBUG:
        _warn(
            Message(
                N_(
                    "--log-level debug writes the measured domains and addresses to the log: "
                    "anyone who reads it learns what this probe measured"
                )
            )
        )


def _collectors(collector: list[str] | None) -> tuple[str, ...]:
    """The ``--collector`` URLs, parsed; at least one (``run`` and ``rotate-key``)."""
    collectors = tuple(parse_collector_url(url) for url in collector or ())
    if not collectors:
        raise InvalidOptionError(N_("no collector given: pass --collector URL"))
    return collectors


def _check_ca_file(ca_file: str | None) -> None:
    """A bad ``--ca-file`` bundle is invalid input, not a failed round."""
    from probe_agent.daemon.client import ssl_context  # noqa: PLC0415

    ssl_context(ca_file)


def _daemon_options(interval: str | None, retest_spacing: str | None) -> DaemonOptions:
    from probe_agent.daemon.loop import DaemonOptions  # noqa: PLC0415

    return DaemonOptions(
        interval=parse_duration(interval) if interval else None,
        retest_spacing=parse_duration(retest_spacing) if retest_spacing else None,
    )


def _warn_plain_http(collectors: tuple[str, ...]) -> None:
    for position, url in enumerate(collectors, 1):
        if url.startswith("http://") and not _is_loopback_url(url):
            _warn(
                Message(
                    N_(
                        "collector %(position)s is plain http: anyone on the path can read the "
                        "measurements and see that this machine runs a probe"
                    ),
                    position=position,
                )
            )


def _start(options: RunOptions, daemon: DaemonOptions | None) -> int:
    """One round (no *daemon*: ``--once``) or the daemon; the exit status."""
    from probe_agent.daemon.loop import run_daemon  # noqa: PLC0415
    from probe_agent.daemon.round import run_once  # noqa: PLC0415

    try:
        return asyncio.run(run_once(options) if daemon is None else run_daemon(options, daemon))
    except IdentityError as exc:
        raise _fail(exc) from None


PROXY_SCHEMES = ("socks5", "socks5h", "socks4", "http")


def parse_proxy_url(text: str) -> str:
    """A proxy URL: scheme, host and port, nothing else (user:password allowed)."""
    parts = urllib.parse.urlsplit(text.strip())
    if parts.scheme not in PROXY_SCHEMES or not parts.hostname or parts.path not in ("", "/"):
        raise InvalidOptionError(
            N_("invalid proxy %(text)r: use socks5://host:port or http://host:port"), text=text
        )
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        raise InvalidOptionError(N_("invalid proxy %(text)r: give the port"), text=text)
    # socks5h (curl's spelling of "the proxy resolves names") is what socks5 does here.
    return text.strip().replace("socks5h://", "socks5://", 1)


def _is_loopback_url(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@app.command(
    "id",
    cls=LocalizedCommand,
    help=N_("Print the probe's public key fingerprint (its key id), creating the key if needed."),
)
def show_id(state_dir: StateDirOption = DEFAULT_STATE_DIR) -> None:
    try:
        key = load_or_create_key(state_dir)
    except IdentityError as exc:
        raise _fail(exc) from None
    typer.echo(key_id(key))


@app.command(
    cls=LocalizedCommand,
    help=N_(
        "Show the probe's health: last check-in, last error, spool, key. Exit 1 when unhealthy."
    ),
)
def status(
    state_dir: StateDirOption = DEFAULT_STATE_DIR,
    as_json: Annotated[
        bool, typer.Option("--json", help=N_("One JSON object on stdout."), envvar=_env("JSON"))
    ] = False,
) -> None:
    import json  # noqa: PLC0415

    from probe_agent.state.spool import SpoolError  # noqa: PLC0415
    from probe_agent.state.status import read_status  # noqa: PLC0415

    try:
        current = read_status(state_dir)
    except (IdentityError, SpoolError) as exc:
        raise _fail(exc) from None
    if as_json:
        typer.echo(json.dumps(current.to_json(), sort_keys=True))
    else:
        for line in current.lines(i18n.gettext):
            typer.echo(line)
    raise typer.Exit(0 if current.healthy else 1)


@app.command(
    "rotate-key",
    cls=LocalizedCommand,
    help=N_(
        "Replace the probe's key with a new one, once the collector accepted it (stop the "
        "daemon first). Give it the same --proxy as `run`."
    ),
)
def rotate_key(
    state_dir: StateDirOption = DEFAULT_STATE_DIR,
    collector: CollectorOption = None,
    ca_file: CAFileOption = None,
    collector_timeout: CollectorTimeoutOption = 30.0,
    proxy: ProxyOption = None,
) -> None:
    from probe_agent.daemon.rotation import rotate_key as rotate  # noqa: PLC0415
    from probe_agent.daemon.round import describe  # noqa: PLC0415
    from probe_agent.protocol.errors import CollectorRefused, CollectorUnreachable  # noqa: PLC0415

    try:
        collectors = _collectors(collector)
        _check_ca_file(str(ca_file) if ca_file else None)
        proxy_url = parse_proxy_url(proxy) if proxy else None
    except InvalidInputError as exc:
        raise _fail(exc) from None
    try:
        rotated = asyncio.run(
            rotate(
                state_dir,
                collectors,
                ca_file=str(ca_file) if ca_file else None,
                timeout=collector_timeout,
                proxy=proxy_url,
            )
        )
    except IdentityError as exc:
        raise _fail(exc) from None
    except CollectorUnreachable as exc:
        reason = describe(exc, i18n.gettext)
        _error(Message(N_("%(reason)s; the new key is kept: run rotate-key again"), reason=reason))
        raise typer.Exit(1) from None
    except CollectorRefused as exc:
        reason = describe(exc, i18n.gettext)
        _error(Message(N_("%(reason)s; the key is unchanged"), reason=reason))
        raise typer.Exit(1) from None
    _say(Message(N_("rotated the probe's key (was %(old)s...)"), old=rotated.old_key_id[:16]))
    typer.echo(rotated.new_key_id)


@app.command(
    cls=LocalizedCommand,
    help=N_("Delete the probe's key, spool and state (asks first unless --yes)."),
)
def wipe(
    state_dir: StateDirOption = DEFAULT_STATE_DIR,
    yes: Annotated[bool, typer.Option("--yes", help=N_("Do not ask for confirmation."))] = False,
) -> None:
    from probe_agent.state.wipe import looks_like_state_dir, wipe_state  # noqa: PLC0415

    directory = state_dir.expanduser()
    if not looks_like_state_dir(directory):
        raise _fail(
            Message(
                N_(
                    "refusing to wipe %(directory)s: not a probe state directory (no key.pem "
                    "or state.json)"
                ),
                directory=directory,
            )
        )
    question = Message(
        N_(
            "Delete the probe's key, waiting measurements and state in %(directory)s? This "
            "cannot be undone"
        ),
        directory=directory,
    )
    if not yes and not typer.confirm(i18n.render(question)):
        _say(Message(N_("nothing deleted")))
        raise typer.Exit(1)
    try:
        removed, left = wipe_state(directory)
    except OSError as exc:
        raise _fail(
            Message(
                N_("cannot wipe %(directory)s: %(reason)s"),
                directory=directory,
                reason=exc.strerror,
            )
        ) from None
    _say(Message(N_("deleted %(count)s file(s)"), count=len(removed)))
    if left:
        _say(
            Message(
                N_("kept %(count)s file(s) the probe did not write; the directory stays"),
                count=len(left),
            )
        )


app.command("verify", cls=LocalizedCommand, help=verify.HELP)(verify.command)


@app.command(cls=LocalizedCommand, help=N_("Print the probe's version."))
def version() -> None:
    typer.echo(f"blockwatch-probe {__version__}")


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # A measurement allocates thousands of short-lived objects and few cycles: a
    # rarer young-generation collection saves ~5% CPU on long lists.
    gc.set_threshold(20_000, 50, 100)
    app()
