"""`make demo`: measure a simulated network where some instances are blocked.

Starts, on loopback only, a DNS server and eight simulated fediverse instances
(HTTPS with a demo CA and a Mastodon-like API), several of them behaving the way
the Great Firewall treats blocked instances, then:

1. runs the real CLI, ``blockwatch-probe measure --format table``, against them;
2. starts the real collector (``blockwatch-collector serve``, SQLite in a
   temporary directory), gives the targets to it, and runs a volunteer's probe
   round, ``blockwatch-probe run --once``: the probe makes its key, enrolls with
   a token, checks in, measures, signs and submits; the collector verifies and
   stores, and the demo shows what it holds.

No packet leaves the machine: the resolver, the instances and the collector all
live in 127.0.0.0/8.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tests.support.dns_server import DNSBehaviour, DNSRecord
from tests.support.simnet import SimInstance, SimulatedNetwork, free_tcp_port
from tests.support.tls_servers import ServerBehaviour

INSTANCES: list[tuple[SimInstance, str]] = [
    (SimInstance("mastodon.demo"), "healthy instance"),
    (
        SimInstance("alive.demo", ServerBehaviour.SNI_FILTER, DNSBehaviour.INJECT),
        "forged DNS answer racing the real one + RST on its SNI (how pawoo.net was blocked)",
    ),
    (SimInstance("sni.demo", ServerBehaviour.SNI_FILTER), "RST after a ClientHello naming it"),
    (SimInstance("poison.demo", dns=DNSBehaviour.INJECT), "forged DNS answer only"),
    (SimInstance("mitm.demo", ServerBehaviour.UNTRUSTED_CA), "TLS interception (untrusted CA)"),
    (SimInstance("gone.demo", dns=DNSBehaviour.NXDOMAIN), "NXDOMAIN"),
    (SimInstance("silent.demo", ServerBehaviour.DROP_AFTER_HELLO), "handshake goes unanswered"),
    (SimInstance("broken.demo", ServerBehaviour.HTTP_500), "server answers 500 (an outage)"),
]
BOGON = ("bogon.demo", "10.10.34.34", "ISP resolver answers with a private address")


def _plan() -> Table:
    table = Table(title="The simulated network (all on 127.0.0.0/8)", show_header=True)
    table.add_column("domain")
    table.add_column("what the simulated censor or server does")
    for inst, what in INSTANCES:
        table.add_row(inst.domain, what)
    table.add_row(BOGON[0], BOGON[2])
    return table


async def main() -> int:
    console = Console()
    console.rule("[bold]Blockwatch demo: the probe's measurement engine")
    console.print(_plan())
    with tempfile.TemporaryDirectory(prefix="blockwatch-demo-") as tmp:
        async with SimulatedNetwork(Path(tmp), [inst for inst, _ in INSTANCES]) as net:
            net.dns.records[BOGON[0]] = DNSRecord(a=[BOGON[1]])
            probe = shutil.which("blockwatch-probe", path=str(Path(sys.executable).parent))
            args = [
                probe or "blockwatch-probe",
                "measure",
                "--format",
                "table",
                *net.probe_args(),
                *[inst.domain for inst, _ in INSTANCES],
                BOGON[0],
            ]
            console.print(f"\n[dim]$ {' '.join(args)}[/]\n")
            env = {**os.environ, "COLUMNS": os.environ.get("COLUMNS", "160")}
            proc = await asyncio.create_subprocess_exec(*args, env=env)
            code = await proc.wait()
            code = code or await _collector_round(console, Path(tmp), net)
    console.print(
        "\nRead it as a volunteer would: [bold red]red[/] rows carry local evidence of "
        "tampering (hints) that needs no control; [yellow]yellow[/] rows failed somewhere "
        "without such evidence, which the collector's control will classify as block or "
        "outage. Every field is explained in docs/measurement-format.md."
    )
    return code


async def _collector_round(console: Console, tmp: Path, net: SimulatedNetwork) -> int:
    """The same targets through a volunteer's probe and the real collector."""
    console.rule("[bold]A volunteer's round: probe -> signed envelopes -> collector")
    bin_dir = Path(sys.executable).parent
    collector, probe = str(bin_dir / "blockwatch-collector"), str(bin_dir / "blockwatch-probe")
    database = f"sqlite:///{tmp}/collector.db"
    port = free_tcp_port("127.0.0.1")
    env = {**os.environ, "BLOCKWATCH_DATABASE_URL": database, "COLUMNS": "160"}
    domains = [inst.domain for inst, _ in INSTANCES] + [BOGON[0]]
    await _run(console, [collector, "targets", "add", *domains, "--group", "demo"], env)
    token = await _run(console, [collector, "probes", "token", "--uses", "1"], env, quiet=True)
    with (tmp / "collector.log").open("wb") as log:
        server = await asyncio.create_subprocess_exec(
            collector,
            "serve",
            "--port",
            str(port),
            "--mode",
            "lab",
            env=env,
            stdout=log,
            stderr=log,
        )
        try:
            await _wait_listening(port)
            code = await _run(
                console,
                [
                    probe,
                    "run",
                    "--once",
                    "--collector",
                    f"http://127.0.0.1:{port}",
                    "--enroll-token",
                    token.strip(),
                    "--state-dir",
                    str(tmp / "probe-state"),
                    "--cc",
                    "CN",
                    "--asn",
                    "4134",
                    *net.probe_args(),
                ],
                env,
            )
        finally:
            server.terminate()
            await server.wait()
    await _run(console, [collector, "probes", "list"], env)
    console.print(
        "The collector now holds each measurement as the exact bytes the probe signed, "
        "with its signature and key id (evidence anyone can verify), attributed to the "
        "declared network CN AS4134 (loopback cannot be geolocated) and never to an address."
    )
    return int(code)


async def _run(console: Console, argv: list[str], env: dict[str, str], quiet: bool = False) -> Any:
    shown = " ".join(Path(a).name if a.startswith("/") and "/bin/" in a else a for a in argv)
    console.print(f"\n[dim]$ {shown}[/]")
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.PIPE if quiet else None
    )
    out, _ = await proc.communicate()
    if quiet:
        return out.decode()
    return proc.returncode


async def _wait_listening(port: int) -> None:
    """uvicorn binds its socket after the app's startup (migrations): connecting means ready."""
    for _ in range(150):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise RuntimeError("the collector did not start")


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
