"""`make demo`: measure a simulated network where some instances are blocked.

Starts, on loopback only, a DNS server and eight simulated fediverse instances
(HTTPS with a demo CA and a Mastodon-like API), several of them behaving the way
the Great Firewall treats blocked instances, then runs the real CLI,
``blockwatch-probe measure --format table``, against them. No packet leaves the
machine: the resolver and every instance live in 127.0.0.0/8.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tests.support.dns_server import DNSBehaviour, DNSRecord
from tests.support.simnet import SimInstance, SimulatedNetwork
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
    console.print(
        "\nRead it as a volunteer would: [bold red]red[/] rows carry local evidence of "
        "tampering (hints) that needs no control; [yellow]yellow[/] rows failed somewhere "
        "without such evidence, which the collector's control will classify as block or "
        "outage. Every field is explained in docs/measurement-format.md."
    )
    return code


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
