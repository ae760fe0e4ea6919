"""The scenario catalogue: censor configurations and what the probe must observe.

Each scenario sets the lab up (censor policies, server behaviours), runs the
real ``blockwatch-probe measure`` in a censored network, and states what the
measurement must show, composed from the engine's own constants (``Failure``,
``Hint``), never literal strings. ``tests/lab/test_scenarios.py`` runs them
all; ``docs/lab.md`` says how to add one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from probe_agent.protocol.addresses import is_forged
from probe_agent.protocol.vocabulary import Failure, Hint
from tests.lab import topology as topo
from tests.lab.censor import Policy

# -- baseline --------------------------------------------------------------------

CENSORED_SIDE = [n.cidr for n in topo.NETWORKS] + ["10.255.0.0/30"]
# 20 ms each way through the national censor: a 40 ms RTT from China to the
# instances; the regional censor adds 1 ms each way.
NATIONAL_DELAY_MS = 20.0
REGIONAL_DELAY_MS = 1.0
RESIDUAL_SECONDS = 20.0  # the GFW's is 120-180 s; shortened so the catalogue stays fast


def baseline_policies() -> tuple[Policy, Policy]:
    national = Policy(inside=CENSORED_SIDE, delay_ms=NATIONAL_DELAY_MS)
    regional = Policy(inside=[topo.NETWORKS[1].cidr], delay_ms=REGIONAL_DELAY_MS)
    return national, regional


# -- expectations ----------------------------------------------------------------


class _Any:
    def __repr__(self) -> str:
        return "ANY"


ANY: Any = _Any()  # do not check this step
NOT_DIALLED = "not dialled"  # no observation of this step at all
OK = None  # the step succeeded (failure is null)


def _failures(observations: list[dict[str, Any]]) -> set[str | None] | str:
    if not observations:
        return NOT_DIALLED
    return {o["failure"] for o in observations}


@dataclass(frozen=True)
class Expect:
    """What one measurement must show. Each field is a step's failure (or OK)."""

    hints: frozenset[Hint] = frozenset()
    dns_a: str | None = OK  # every A query over UDP to the first resolver
    dns_a_forged: bool = False  # that answer is from the forged pool
    tcp: str | None = OK
    decoy: str | None = OK
    tls: str | None = OK
    http_status: int | None = 200
    mastodon: bool | None = True
    min_connect_seconds: float = 0.0

    def check(self, m: dict[str, Any]) -> list[str]:
        errors: list[str] = []

        def compare(what: str, expected: object, seen: object) -> None:
            if expected is ANY:
                return
            wanted = expected if expected == NOT_DIALLED else {expected}
            if seen != wanted:
                errors.append(f"{m['domain']}: {what}: expected {wanted}, saw {seen}")

        hints = frozenset(Hint(h) for h in m["hints"])
        if hints != self.hints:
            errors.append(
                f"{m['domain']}: hints: expected {sorted(self.hints)}, saw {sorted(hints)}"
            )
        first = m["dns"][0]["resolver"] if m["dns"] else None
        a_udp = [
            d
            for d in m["dns"]
            if d["resolver"] == first
            and d["transport"] == "udp"
            and d["query_type"] == "A"
            and not d["injection_sink"]
        ]
        compare("dns A/udp", self.dns_a, _failures(a_udp))
        if self.dns_a_forged and not all(
            a and all(is_forged(ip) for ip in a["answers"]) for a in a_udp
        ):
            errors.append(f"{m['domain']}: dns A/udp: expected a forged answer, saw {a_udp}")
        compare("tcp", self.tcp, _failures(m["tcp"]))
        compare("tls decoy", self.decoy, _failures([t for t in m["tls"] if t["decoy"]]))
        compare("tls", self.tls, _failures([t for t in m["tls"] if not t["decoy"]]))
        if self.http_status is not ANY:
            statuses = {h["status_code"] for h in m["http"][:1]} if m["http"] else NOT_DIALLED
            wanted = NOT_DIALLED if self.http_status == NOT_DIALLED else {self.http_status}
            if statuses != wanted:
                errors.append(f"{m['domain']}: http status: expected {wanted}, saw {statuses}")
        if self.mastodon is not ANY and self.mastodon is not None:
            seen = any(h["mastodon"] for h in m["http"])
            if seen != self.mastodon:
                errors.append(f"{m['domain']}: mastodon: expected {self.mastodon}, saw {seen}")
        connects = [t["t"] - t["t0"] for t in m["tcp"] if t["failure"] is None]
        if self.min_connect_seconds and not all(c >= self.min_connect_seconds for c in connects):
            errors.append(
                f"{m['domain']}: connect took {connects}, expected >= {self.min_connect_seconds}"
            )
        return errors


HEALTHY = Expect()
# What a probe sees of a domain whose address it never dials.
UNDIALLED = Expect(
    tcp=NOT_DIALLED, decoy=NOT_DIALLED, tls=NOT_DIALLED, http_status=NOT_DIALLED, mastodon=False
)
SNI_RESET = Expect(
    hints=frozenset({Hint.TLS_SNI_BLOCKED}),
    tls=Failure.CONNECTION_RESET.value,
    http_status=NOT_DIALLED,
    mastodon=False,
)


@dataclass(frozen=True)
class Step:
    """One probe run: where, which domains, extra CLI arguments, and what each must show."""

    vantage: str  # a probe host role: "a1", "a2", "b1", "b2"
    expect: dict[str, Expect]
    args: tuple[str, ...] = ()


Setup = Callable[[Any], None]  # receives the running Lab


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    setup: Setup
    steps: tuple[Step, ...]
    tags: frozenset[str] = field(default_factory=frozenset)


def national(**changes: Any) -> Setup:
    def apply(lab: Any) -> None:
        lab.national.set_policy(replace(baseline_policies()[0], **changes))

    return apply


def regional(**changes: Any) -> Setup:
    def apply(lab: Any) -> None:
        lab.regional.set_policy(replace(baseline_policies()[1], **changes))

    return apply


def both(*setups: Setup) -> Setup:
    def apply(lab: Any) -> None:
        for setup in setups:
            setup(lab)

    return apply


def server(domain: str, behaviour: str) -> Setup:
    def apply(lab: Any) -> None:
        lab.web.request(op="instance", domain=domain, behaviour=behaviour)

    return apply


def isp_bogon(domain: str, address: str) -> Setup:
    def apply(lab: Any) -> None:
        for net in topo.NETWORKS:
            lab.isp[net.name].request(op="bogons", resolver=net.resolver, answers={domain: address})

    return apply


def ip_of(domain: str) -> Callable[[Any], str]:
    return lambda lab: lab.ip_of(domain)


def by_address(field_name: str, domain: str, **extra: Any) -> Setup:
    """A national policy listing *domain*'s address in *field_name*."""

    def apply(lab: Any) -> None:
        value: Any = [lab.ip_of(domain)]
        if field_name == "throttle":
            value = {lab.ip_of(domain): extra}
        lab.national.set_policy(replace(baseline_policies()[0], **{field_name: value}))

    return apply


def nothing(lab: Any) -> None:
    """The baseline: delay only."""


FOREIGN = ("--resolver", topo.RECURSIVE_RESOLVER)  # a resolver abroad, through the censor
SINK = ("--injection-sink", topo.INJECTION_SINK)
FORGED_DUP = frozenset({Hint.DNS_FORGED_IP, Hint.DNS_DUPLICATE_ANSWERS})

CATALOGUE: tuple[Scenario, ...] = (
    Scenario(
        "success",
        "No censorship: every step works from both networks.",
        nothing,
        (
            Step("a1", {"alive.test": HEALTHY, "o3o.test": HEALTHY}),
            Step("b1", {"alive.test": HEALTHY}),
        ),
    ),
    Scenario(
        "dns_injection_isp",
        "The GFW injects a forged A answer; the ISP resolver caches the first answer it gets.",
        national(dns_inject=["alive.test"]),
        (
            Step(
                "a1",
                {
                    "alive.test": replace(
                        UNDIALLED, hints=frozenset({Hint.DNS_FORGED_IP}), dns_a_forged=True
                    ),
                    "o3o.test": HEALTHY,
                },
            ),
        ),
    ),
    Scenario(
        "dns_injection_foreign_resolver",
        "Querying a resolver abroad: the forged answer arrives first, the real one later; "
        "DNS over TCP is not injected, so the real address is still measured.",
        national(dns_inject=["alive.test"]),
        (Step("a1", {"alive.test": Expect(hints=FORGED_DUP, dns_a_forged=True)}, FOREIGN),),
    ),
    Scenario(
        "dns_injection_sink",
        "A query to an address that runs no resolver still gets the forged answer.",
        national(dns_inject=["alive.test"]),
        (
            Step(
                "a1",
                {"alive.test": Expect(hints=FORGED_DUP | {Hint.DNS_INJECTION}, dns_a_forged=True)},
                FOREIGN + SINK,
            ),
            Step("a1", {"o3o.test": HEALTHY}, FOREIGN + SINK),
        ),
    ),
    Scenario(
        "dns_nxdomain_injection",
        "The censor answers NXDOMAIN for the name and drops the query.",
        national(dns_nxdomain=["alive.test"]),
        (Step("a1", {"alive.test": replace(UNDIALLED, dns_a=Failure.DNS_NXDOMAIN.value)}),),
    ),
    Scenario(
        "isp_bogon_loopback",
        "The ISP resolver answers 127.0.0.1.",
        isp_bogon("alive.test", "127.0.0.1"),
        (Step("a1", {"alive.test": replace(UNDIALLED, hints=frozenset({Hint.DNS_BOGON}))}),),
    ),
    Scenario(
        "isp_bogon_private",
        "The ISP resolver answers a private 10.x address.",
        isp_bogon("alive.test", "10.10.34.34"),
        (Step("b1", {"alive.test": replace(UNDIALLED, hints=frozenset({Hint.DNS_BOGON}))}),),
    ),
    Scenario(
        "ip_blackhole",
        "Every packet to the instance's address is dropped.",
        by_address("blackhole", "g0v.test"),
        (Step("a1", {"g0v.test": replace(UNDIALLED, tcp=Failure.GENERIC_TIMEOUT.value)}),),
    ),
    Scenario(
        "tcp_rst_on_connect",
        "The censor answers the SYN with a RST.",
        by_address("rst_connect", "g0v.test"),
        (Step("a1", {"g0v.test": replace(UNDIALLED, tcp=Failure.CONNECTION_REFUSED.value)}),),
    ),
    Scenario(
        "sni_reset",
        "A ClientHello naming the instance is answered with RSTs to both ends.",
        national(sni_rst=["alive.test"]),
        (Step("a1", {"alive.test": SNI_RESET}),),
    ),
    Scenario(
        "sni_drop",
        "A ClientHello naming the instance is silently dropped.",
        national(sni_drop=["alive.test"]),
        (Step("a1", {"alive.test": replace(SNI_RESET, tls=Failure.GENERIC_TIMEOUT.value)}),),
    ),
    Scenario(
        "residual_blocking",
        "After an SNI trigger the censor blocks the (client, server, port) triple for a while: "
        "another site on the same address fails at connect, while other probes are unaffected.",
        national(sni_rst=["cmx.test"], residual_seconds=RESIDUAL_SECONDS),
        (
            Step("a1", {"cmx.test": SNI_RESET}),
            Step("a1", {"shared.test": replace(UNDIALLED, tcp=Failure.CONNECTION_REFUSED.value)}),
            Step("a2", {"shared.test": HEALTHY}),
        ),
    ),
    Scenario(
        "tls_interception",
        "Port 443 of the instance is intercepted by a proxy with its own CA.",
        by_address("mitm", "mstdn.test"),
        (
            Step(
                "a1",
                {
                    "mstdn.test": Expect(
                        hints=frozenset({Hint.TLS_MITM}),
                        tls=Failure.SSL_UNKNOWN_AUTHORITY.value,
                        http_status=NOT_DIALLED,
                        mastodon=False,
                    )
                },
            ),
        ),
    ),
    Scenario(
        "http_block_page",
        "A plain-HTTP request for the site gets the censor's block page.",
        national(http_block=["plain.test"]),
        (
            Step(
                "a1",
                {
                    "plain.test": Expect(
                        decoy=NOT_DIALLED, tls=NOT_DIALLED, http_status=403, mastodon=False
                    )
                },
                ("--scheme", "http", "--port", "80"),
            ),
        ),
    ),
    Scenario(
        "throttling",
        "300 ms of extra delay each way to the instance: slow, not blocked.",
        by_address("throttle", "wxw.test", delay_ms=300.0, loss=0.0),
        (Step("a1", {"wxw.test": replace(HEALTHY, min_connect_seconds=0.6)}),),
    ),
    Scenario(
        "pawoo_dns_and_sni",
        "DNS injection and SNI reset on one domain, the way pawoo.net was blocked.",
        national(dns_inject=["pawoo.test"], sni_rst=["pawoo.test"]),
        (
            Step(
                "a1",
                {
                    "pawoo.test": replace(
                        SNI_RESET, hints=FORGED_DUP | {Hint.TLS_SNI_BLOCKED}, dns_a_forged=True
                    )
                },
                FOREIGN,
            ),
        ),
    ),
    Scenario(
        "regional_sni_reset",
        "Henan's regional firewall resets the SNI; the national one does "
        "not: blocked from cn-b only.",
        regional(sni_rst=["o3o.test"]),
        (Step("b1", {"o3o.test": SNI_RESET}), Step("a1", {"o3o.test": HEALTHY})),
    ),
    Scenario(
        "outage_server_down",
        "The instance's server is down (not censorship): RST on connect.",
        server("g0v.test", "closed"),
        (Step("a1", {"g0v.test": replace(UNDIALLED, tcp=Failure.CONNECTION_REFUSED.value)}),),
    ),
    Scenario(
        "outage_http_500",
        "The instance answers 500 (not censorship).",
        server("g0v.test", "http_500"),
        (Step("a1", {"g0v.test": Expect(http_status=500, mastodon=False)}),),
    ),
    Scenario(
        "outage_authoritative_dns_down",
        "The instance's authoritative DNS server is down (not censorship): SERVFAIL.",
        lambda lab: lab.dns.request(op="authoritative", up=False),
        (Step("a1", {"alive.test": replace(UNDIALLED, dns_a=Failure.DNS_SERVFAIL.value)}),),
    ),
)
