"""`make demo`: measure a simulated network where some instances are blocked.

Starts, on loopback only, a DNS server and eight simulated fediverse instances
(HTTPS with a demo CA and a Mastodon-like API), several of them behaving the way
the Great Firewall treats blocked instances, then:

1. runs the real CLI, ``blockwatch-probe measure --format table``, against them;
2. starts the real collector (``blockwatch-collector serve``, SQLite in a
   temporary directory) with its control prober looking at an uncensored copy of
   the same network (same addresses, another port, its own resolver: the
   internet as seen from outside), and runs two volunteers' probe rounds,
   ``blockwatch-probe run --once``, in two networks: each probe makes its key,
   enrolls, checks in, measures, signs and submits;
3. the collector matches each measurement with a control, turns them into
   verdicts and the verdicts of the two probes into block events: the demo
   shows ``blockwatch-collector events`` and the status of an instance with its
   mirror. The outage (broken.demo) is ``down``, never an event; the collector's
   own name (``serve --endpoint``, collector.demo) is measured by the probes like
   a target, and its status says the collector is blocked in CN;
4. what an operator watches: the URLs the collector serves, ``/readyz``, and,
   when Debian's ``prometheus`` is installed, a Prometheus scraping the
   collector's ``/metrics`` with the operators' alert rules loaded, asked the
   Grafana dashboard's first query (instances x countries);
5. the pages people read, in English and Chinese: their URLs and sizes; at a
   terminal the collector keeps serving them until Ctrl-C (``DEMO_ONCE=1``
   exits at once, as it does without a terminal);
6. alive.demo's admins get one alert per event, signed, in their language: a
   webhook subscribed in Chinese (its signature checked as a receiver would,
   its ``summary`` shown) and a Slack-format one in English, both received on
   loopback (docs/admin-guide.md);
7. OONI's measurements (a sample built from OONI's spec) judged by the same
   rules, Blockwatch's verdict beside OONI's ``blocking`` (``ooni import
   --dry-run``: nothing stored); then every stored measurement judged again by
   today's rules (``reanalyse``, a dry run) and the events exported as CSV (the
   public view), as a researcher would;
8. alive.demo's evidence bundle, fetched with the admin token while the
   collector runs, is verified offline at the end (``blockwatch-probe verify``
   against the saved ``/.well-known/blockwatch.json``; docs/evidence.md).

No packet leaves the machine: the resolver, the instances and the collector all
live in 127.0.0.0/8.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import shutil
import sys
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from aiohttp import web
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
    (
        SimInstance("broken.demo", ServerBehaviour.RESET_AFTER_HELLO),
        "TLS broken for everyone, the control too (an outage)",
    ),
    (SimInstance("alive-mirror.demo"), "alive.demo's mirror, not blocked (yet)"),
    (
        SimInstance("collector.demo", dns=DNSBehaviour.INJECT),
        "the collector's own name: forged DNS answer (a censor noticed the network)",
    ),
]
OWN_NAME = "collector.demo"  # measured as the collector's --endpoint, not added as a target
# What the uncensored internet sees: the outage stays, the censorship does not.
OUTAGES = {"broken.demo"}
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
            clean_view = [
                SimInstance(inst.domain, inst.behaviour if inst.domain in OUTAGES else
                            ServerBehaviour.MASTODON, ip=inst.ip)
                for inst, _ in INSTANCES
            ]  # fmt: skip
            async with SimulatedNetwork(Path(tmp) / "outside", clean_view) as outside:
                code = code or await _collector_round(console, Path(tmp), net, outside)
    console.print(
        "\nRead it as a volunteer would: [bold red]red[/] rows carry local evidence of "
        "tampering (hints) that needs no control; [yellow]yellow[/] rows failed somewhere "
        "without such evidence, which the collector's control will classify as block or "
        "outage. Every field is explained in docs/measurement-format.md."
    )
    return code


async def _collector_round(
    console: Console, tmp: Path, net: SimulatedNetwork, outside: SimulatedNetwork
) -> int:
    """The same targets through two volunteers' probes, the collector and its control."""
    console.rule("[bold]Two volunteers' rounds: probe -> signed envelopes -> collector")
    bin_dir = Path(sys.executable).parent
    collector, probe = str(bin_dir / "blockwatch-collector"), str(bin_dir / "blockwatch-probe")
    database = f"sqlite:///{tmp}/collector.db"
    port = free_tcp_port("127.0.0.1")
    admin_token = secrets.token_urlsafe(32)  # the evidence bundle is fetched as the operator
    env = {**os.environ, "BLOCKWATCH_DATABASE_URL": database, "COLUMNS": "160",
           "BLOCKWATCH_ADMIN_TOKEN": admin_token,
           # The alert receivers are on loopback, which alerts may not reach by default.
           "BLOCKWATCH_WEBHOOK_ALLOW_PRIVATE": "true"}  # fmt: skip
    domains = [
        inst.domain
        for inst, _ in INSTANCES
        if "alive" not in inst.domain and inst.domain != OWN_NAME
    ] + [BOGON[0]]
    await _run(console, [collector, "targets", "add", *domains], env)
    await _run(console, [collector, "targets", "add", "alive.demo", "--group", "alive"], env)
    await _run(console, [collector, "targets", "add", "alive-mirror.demo", "--group", "alive",
                         "--kind", "mirror"], env)  # fmt: skip
    # Volunteers, not keys, vote: each probe gets its own token, vouched for the
    # network it declares (loopback cannot be geolocated).
    probes = (("probe-a", "4134"), ("probe-b", "4837"))
    tokens = {
        name: (await _run(console, [collector, "probes", "token", "--cc", "CN", "--asn", asn,
                                    "--note", f"demo {name}"], env, quiet=True)).strip()
        for name, asn in probes
    }  # fmt: skip
    # alive.demo's admins subscribe: a webhook in Chinese, a Slack channel in English.
    hooks = AlertReceiver()
    hook_runner, hook_port = await hooks.start()
    secret = await _subscribe(console, collector, env, hook_port)
    serve = [
        collector, "serve", "--port", str(port), "--mode", "lab",
        # The control prober: the uncensored copy of the network, on loopback too.
        "--control-resolver", outside.resolver, "--control-port", str(outside.port),
        "--ca-file", str(outside.ca_file), "--lab-network", "127.0.0.0/8",
        "--measure-interval", "3s", "--detect-interval", "1s", "--control-timeout", "2",
        "--detect-window", "60s",  # the two rounds run one after the other
        # The collector's own name, served (here) by the uncensored copy: the probes
        # measure it at that port like a target, and the collector learns it is blocked.
        "--endpoint", f"https://{OWN_NAME}:{outside.port}",
    ]  # fmt: skip
    code = 0
    with (tmp / "collector.log").open("wb") as log:
        server = await asyncio.create_subprocess_exec(*serve, env=env, stdout=log, stderr=log)
        try:
            await _wait_listening(port)
            for name, asn in probes:
                code = code or await _run(
                    console,
                    [probe, "run", "--once", "--collector", f"http://127.0.0.1:{port}",
                     "--enroll-token", tokens[name], "--state-dir", str(tmp / name),
                     "--cc", "CN", "--asn", asn, *net.probe_args()],
                    env,
                )  # fmt: skip
            console.print("\n[dim]waiting for controls and the detector's passes...[/]")
            await _wait_for_events(collector, env, minimum=5)
            await _alerts(console, hooks, secret)
            await _fetch_evidence(console, tmp, port, admin_token)
            await _watch(console, tmp, port, admin_token)
            code = code or await _report(console, tmp, collector, probe, env)
            await _pages(console, port)  # at a terminal: serves until Ctrl-C
        finally:
            server.terminate()
            await server.wait()
            await hook_runner.cleanup()
    return int(code)


class AlertReceiver:
    """alive.demo's admins' endpoints: a webhook (/zh) and a Slack-like hook (/en)."""

    def __init__(self) -> None:
        self.seen: dict[str, list[tuple[dict[str, str], bytes]]] = {"/zh": [], "/en": []}

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.setdefault(request.path, []).append((dict(request.headers), await request.read()))
        return web.Response(status=204)

    async def start(self) -> tuple[web.AppRunner, int]:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_tcp_port("127.0.0.1")
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner, port


async def _subscribe(console: Console, collector: str, env: dict[str, str], port: int) -> str:
    """Two subscriptions of alive.demo, as its operator would add them; the webhook's secret."""
    added = await _run(console, [collector, "subscriptions", "add", "alive.demo", "--setting",
                                 f"url=http://127.0.0.1:{port}/zh", "--language", "zh-Hans"],
                       env, quiet=True)  # fmt: skip
    await _run(console, [collector, "subscriptions", "add", "alive.demo", "--channel", "slack",
                         "--setting", f"url=http://127.0.0.1:{port}/en", "--language", "en"],
               env, quiet=True)  # fmt: skip
    return str(added).split("signing secret: ")[1].split()[0]


def _signed(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The receiver's check (Standard Webhooks): HMAC-SHA256 of id.timestamp.body."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    content = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
    return any(hmac.compare_digest(expected, s) for s in headers["webhook-signature"].split())


async def _alerts(console: Console, hooks: AlertReceiver, secret: str) -> None:
    """What alive.demo's admins received: one message per event, in their language."""
    for _ in range(100):  # the outbox sends within a second or two of the event
        if hooks.seen["/zh"] and hooks.seen["/en"]:
            break
        await asyncio.sleep(0.1)
    console.rule("[bold]Alerts: one per event, signed, in the subscriber's language")
    for headers, body in hooks.seen["/zh"]:
        document = json.loads(body)
        ok = "valid" if _signed(secret, headers, body) else "[red]INVALID[/]"
        console.print(f"[dim]POST /zh (webhook, {document['type']}, event "
                      f"{document['data']['id']}, signature {ok}), \"summary\":[/]")  # fmt: skip
        console.print(document["summary"], highlight=False)
    for _headers, body in hooks.seen["/en"]:
        console.print('[dim]POST /en (slack), "text":[/]')
        console.print(json.loads(body)["text"], highlight=False)
    if not hooks.seen["/zh"] or not hooks.seen["/en"]:
        console.print("[red]an alert did not arrive (see collector.log)[/]")


async def _report(
    console: Console, tmp: Path, collector: str, probe: str, env: dict[str, str]
) -> int:
    """What the collector made of the rounds, and the evidence verified offline."""
    await _run(console, [collector, "probes", "list"], env)
    await _run(console, [collector, "events"], env)
    await _run(console, [collector, "status", "alive.demo"], env)
    await _run(console, [collector, "status", "broken.demo"], env)
    await _run(console, [collector, "status", OWN_NAME], env)
    console.print(
        "Each event is one (domain, country): opened because two volunteers agree, with the "
        "methods, the networks (ASNs), the first blocked evidence (started) and the "
        "signed measurements behind it (GET /api/v1/events). The control saw broken.demo "
        "fail too: an outage, down, never a block. collector.demo is the collector's own "
        "name (serve --endpoint): the probes measured it like a target, so the operator "
        "learns from them that the collector is blocked in CN. A volunteer's measurement "
        "is kept as the exact bytes the probe signed, attributed to the declared network and never "
        "to an address."
    )
    # OONI as a second source: its measurements judged by the same rules, side by side.
    console.rule("[bold]OONI's measurements, judged by Blockwatch's rules (docs/methodology.md)")
    await _run(console, [collector, "ooni", "import", str(OONI_SAMPLE), "--dry-run"], env)
    console.print(
        "OONI's volunteers measured these in June (a sample built from OONI's spec): where "
        "OONI says http-failure, Blockwatch names the layer (the TLS handshake was cut); "
        "toot.downtown.example is down for everyone, OONI's control too, never a block."
    )
    # For researchers: today's rules over everything stored, and the data out.
    console.rule("[bold]Re-analysis and exports (docs/operator-guide.md)")
    # The analysis settings serve was given, as an operator's environment would hold them.
    same = {"BLOCKWATCH_LAB_NETWORKS": "127.0.0.0/8", "BLOCKWATCH_MEASURE_INTERVAL": "3s",
            "BLOCKWATCH_DETECT_WINDOW": "60s"}  # fmt: skip
    await _run(console, [collector, "reanalyse"], env | same)
    await _run(console, [collector, "export", "--what", "events", "--format", "csv"], env)
    console.print(
        "reanalyse judged every stored measurement again with today's rules and would "
        "change nothing: they are the rules that judged them (after a rules change it lists "
        "the verdicts and the events that would open, close or change; --apply writes "
        "them). The export is the public view: networks too small to name are withheld, "
        "times are rounded."
    )
    # Offline: the bundle and the key saved before are all it takes (verify sends nothing).
    console.rule("[bold]Evidence anyone can verify (docs/evidence.md)")
    verify = [probe, "verify", str(tmp / "bundle.json"), "--collector-key",
              str(tmp / "blockwatch.json")]  # fmt: skip
    return int(await _run(console, verify, env))


async def _fetch_evidence(console: Console, tmp: Path, port: int, admin_token: str) -> None:
    """alive.demo's evidence bundle, as the operator, and the collector's key (saved)."""
    base = f"http://127.0.0.1:{port}"
    events = await asyncio.to_thread(_get, f"{base}/api/v1/events?domain=alive.demo", admin_token)
    event_id = json.loads(events)["data"][0]["id"]
    bundle, known = tmp / "bundle.json", tmp / "blockwatch.json"
    bundle.write_bytes(
        await asyncio.to_thread(_get, f"{base}/api/v1/events/{event_id}/evidence", admin_token)
    )
    known.write_bytes(await asyncio.to_thread(_get, f"{base}/.well-known/blockwatch.json", None))
    console.print(f"[dim]GET /api/v1/events/{event_id}/evidence -> {bundle.name}; "
                  f"GET /.well-known/blockwatch.json -> {known.name}[/]")  # fmt: skip


REPO = Path(__file__).resolve().parents[1]
# OONI web_connectivity measurements built from OONI's spec (tests/data/ooni/README.md).
OONI_SAMPLE = REPO / "tests" / "data" / "ooni" / "mixed.jsonl"
STATE_WORDS = {0: "ok", 1: "unknown", 2: "down", 3: "blocked"}


async def _watch(console: Console, tmp: Path, port: int, admin_token: str) -> None:
    """What the collector serves, its readiness, and Prometheus's view when it is here."""
    console.rule("[bold]Watching it: what the collector serves (docs/api.md)")
    base = f"http://127.0.0.1:{port}"
    urls = Table()
    urls.add_column("URL", overflow="fold")
    urls.add_column("what")
    for path, what in (
        ("/api/v1/events", "block events (JSON)"),
        ("/api/v1/status/alive.demo", "an instance's state per network, and its mirror"),
        ("/api/v1/status/collector.demo", "the collector's own reachability, from its probes"),
        ("/api/v1/events/1/evidence", "an event's evidence bundle (signed)"),
        ("/.well-known/blockwatch.json", "the collector's public key"),
        ("/healthz, /readyz", "liveness; readiness (database, schema, loops)"),
        ("/metrics", "Prometheus (metrics or admin token)"),
    ):
        urls.add_row(base + path, what)
    console.print(urls)
    ready = json.loads(await asyncio.to_thread(_get, f"{base}/readyz", None))
    console.print(f"[dim]GET /readyz ->[/] {json.dumps(ready)}")
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        console.print(
            "[dim]prometheus is not installed (Debian: apt-get install prometheus): "
            "skipping the scrape; deploy/compose.yaml runs the whole stack.[/]"
        )
        return
    token = tmp / "metrics-token"
    token.write_text(admin_token)
    web = free_tcp_port("127.0.0.1")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(REPO / "deploy" / "prometheus" / "blockwatch.rules.yml")],
        "scrape_configs": [{
            "job_name": "blockwatch",
            "authorization": {"type": "Bearer", "credentials_file": str(token)},
            "static_configs": [{"targets": [f"127.0.0.1:{port}"]}],
        }],
    }  # fmt: skip
    (tmp / "prometheus.yml").write_text(json.dumps(config))
    argv = [
        prometheus,
        f"--config.file={tmp / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{web}",
    ]
    with (tmp / "prometheus.log").open("wb") as log:
        proc = await asyncio.create_subprocess_exec(*argv, stdout=log, stderr=log)
    try:
        query = "max by (domain, cc) (blockwatch_target_state)"
        result: list[Any] = []
        for _ in range(40):  # a few scrapes
            await asyncio.sleep(0.5)
            try:
                answer = await asyncio.to_thread(
                    _get, f"http://127.0.0.1:{web}/api/v1/query?query="
                    + urllib.parse.quote(query), None,
                )  # fmt: skip
            except OSError:
                continue
            result = json.loads(answer)["data"]["result"]
            if result:
                break
        console.print(f"\n[dim]Prometheus at http://127.0.0.1:{web} scrapes /metrics every "
                      f"second; the Grafana dashboard's first panel asks:[/] {query}")  # fmt: skip
        states = Table("instance", "country", "state (blockwatch_target_state)")
        for row in sorted(result, key=lambda r: r["metric"]["domain"]):
            value = int(float(row["value"][1]))
            states.add_row(row["metric"]["domain"], row["metric"]["cc"],
                           f"{value} {STATE_WORDS.get(value, '?')}")  # fmt: skip
        console.print(states)
    finally:
        proc.terminate()
        await proc.wait()


PAGES = ["/", "/i/alive.demo", "/i/collector.demo", "/events", "/coverage", "/about",
         "/feed.atom", "/i/alive.demo/badge.svg"]  # fmt: skip


async def _pages(console: Console, port: int) -> None:
    """The pages people read, in both languages; then, at a terminal, keep serving."""
    console.rule("[bold]The pages (English and 简体中文; no script, nothing from elsewhere)")
    base = f"http://127.0.0.1:{port}"
    table = Table()
    table.add_column("page", overflow="fold")
    table.add_column("en")
    table.add_column("zh-Hans")
    for path in PAGES:
        sizes = []
        for lang in ("en", "zh-Hans"):
            body = await asyncio.to_thread(_get, f"{base}{path}?lang={lang}", None)
            sizes.append(f"{len(body) / 1024:.1f} KB")
        table.add_row(base + path, *sizes)
    console.print(table)
    if sys.stdin.isatty() and not os.environ.get("DEMO_ONCE"):
        console.print(f"[bold]Serving at {base}/ until Ctrl-C[/] (DEMO_ONCE=1: exit at once)")
        with contextlib.suppress(asyncio.CancelledError):  # Ctrl-C: on with the demo's end
            await asyncio.Event().wait()


def _get(url: str, token: str | None) -> bytes:
    request = urllib.request.Request(url)  # noqa: S310 (http://127.0.0.1 built above)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy
    with opener.open(request, timeout=10) as answer:
        body: bytes = answer.read()
        return body


async def _wait_for_events(collector: str, env: dict[str, str], minimum: int) -> None:
    """Poll the collector's events until *minimum* are open (or about 30 s)."""
    for _ in range(25):
        proc = await asyncio.create_subprocess_exec(
            collector, "events", "--json", "--state", "open", env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        out, _ = await proc.communicate()
        if len(out.splitlines()) >= minimum:
            return
        await asyncio.sleep(0.5)


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
