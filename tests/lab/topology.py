"""The lab's topology: namespaces, links, addresses and routes, as data.

```
 cn-a (10.1.0.0/24, CN AS4134)        cn-b (10.2.0.0/24, CN AS4837, Henan)
 probe a1 .11  probe a2 .12            probe b1 .11  probe b2 .12
 ISP resolver .53                      ISP resolver .53
        |  bridge                              |  bridge
        |                              [ regional censor ] 10.2.0.1
        |                                      |  10.255.0.0/30
 [ national censor ] 10.1.0.1 ----------------+
        |  bridge  198.18.0.1/16   ("the internet", no route beyond it)
 dns: recursive 198.18.0.53, authoritative 198.18.0.54, DoH https://198.18.0.56/dns-query
 web: instances 198.18.1.1-8, plain-HTTP site 198.18.1.80, no-resolver sink 198.18.9.9
 control vantage 198.18.2.1 (+ SOCKS5 proxy :1080, "a proxy abroad")
 collector 198.18.3.1 (API :8080; https://collector.test :443), second address
   198.18.3.2 :443, the operator's front 198.18.3.3 :443 (any SNI)
```

Every name carries the run's prefix (``bw`` + 4 hex digits) so that two runs
never collide. The internet is 198.18.0.0/15 (RFC 2544 benchmarking space):
never routed on the real internet, and no namespace has a link to the host
anyway; probes in the lab pass ``--lab-network 198.18.0.0/15`` so the engine
dials it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

INTERNET_CIDR = "198.18.0.0/15"
INTERNET_PREFIX = 16
RECURSIVE_RESOLVER = "198.18.0.53"
AUTHORITATIVE = "198.18.0.54"
INJECTION_SINK = "198.18.9.9"
PLAIN_HTTP_SITE = "198.18.1.80"
CONTROL_VANTAGE = "198.18.2.1"
COLLECTOR = "198.18.3.1"
COLLECTOR_PORT = 8080  # the API, plain HTTP: what the lab's tests and most probes use
# The collector as an operator serves it: HTTPS with a name (A: COLLECTOR), a second
# address for the same name, and a front answering any SNI with the name's certificate.
COLLECTOR_NAME = "collector.test"
COLLECTOR_SECOND = "198.18.3.2"
COLLECTOR_FRONT = "198.18.3.3"
FRONT_SNI = "static.front.test"  # the ClientHello's name on the way to the front
DOH_RESOLVER = "198.18.0.56"
SOCKS_PORT = 1080  # on CONTROL_VANTAGE
NATIONAL_GATEWAY = "198.18.0.1"


def instance_ip(index: int) -> str:
    return f"198.18.1.{index + 1}"


@dataclass(frozen=True)
class CensoredNetwork:
    name: str  # "cn-a"
    key: str  # short, for interface names: "a"
    cidr: str
    gateway: str
    cc: str
    asn: int
    probes: tuple[str, ...]
    resolver: str
    regional: bool

    @property
    def prefix_len(self) -> int:
        return int(self.cidr.split("/")[1])


NETWORKS = (
    CensoredNetwork(
        "cn-a",
        "a",
        "10.1.0.0/24",
        "10.1.0.1",
        "CN",
        4134,
        ("10.1.0.11", "10.1.0.12"),
        "10.1.0.53",
        regional=False,
    ),
    CensoredNetwork(
        "cn-b",
        "b",
        "10.2.0.0/24",
        "10.2.0.1",
        "CN",
        4837,
        ("10.2.0.11", "10.2.0.12"),
        "10.2.0.53",
        regional=True,
    ),
)
LINK_NATIONAL = "10.255.0.1"
LINK_REGIONAL = "10.255.0.2"


@dataclass
class Host:
    """One namespace with its addresses on one segment."""

    role: str  # e.g. "a1", "dns", "web"
    segment: str  # "inet", "a", "b"
    addresses: list[str]
    gateway: str
    resolver: str | None = None  # written to /etc/netns/<ns>/resolv.conf


@dataclass
class Topology:
    prefix: str
    hosts: list[Host] = field(default_factory=list)

    def ns(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    @property
    def routers(self) -> list[str]:
        return [self.ns("nat"), self.ns("reg")]

    @property
    def namespaces(self) -> list[str]:
        return [*self.routers, *(self.ns(h.role) for h in self.hosts)]

    def host(self, role: str) -> Host:
        return next(h for h in self.hosts if h.role == role)

    def probe_roles(self, network: str) -> list[str]:
        key = next(n.key for n in NETWORKS if n.name == network)
        return [h.role for h in self.hosts if h.segment == key and h.role != f"{key}dns"]


def build(prefix: str, instances: int) -> Topology:
    topo = Topology(prefix)
    for net in NETWORKS:
        for i, ip in enumerate(net.probes, start=1):
            topo.hosts.append(Host(f"{net.key}{i}", net.key, [ip], net.gateway, net.resolver))
        topo.hosts.append(
            Host(f"{net.key}dns", net.key, [net.resolver], net.gateway, RECURSIVE_RESOLVER)
        )
    web = [instance_ip(i) for i in range(instances)] + [PLAIN_HTTP_SITE, INJECTION_SINK]
    topo.hosts += [
        Host("dns", "inet", [RECURSIVE_RESOLVER, AUTHORITATIVE, DOH_RESOLVER], NATIONAL_GATEWAY),
        Host("web", "inet", web, NATIONAL_GATEWAY),
        Host("ctl", "inet", [CONTROL_VANTAGE], NATIONAL_GATEWAY, RECURSIVE_RESOLVER),
        Host(
            "col",
            "inet",
            [COLLECTOR, COLLECTOR_SECOND, COLLECTOR_FRONT],
            NATIONAL_GATEWAY,
            RECURSIVE_RESOLVER,
        ),
    ]
    return topo


def _veth(topo: Topology, host: Host, index: int) -> tuple[str, str]:
    """Interface names (host side, router side); at most 15 characters each."""
    return f"{topo.prefix}h{index}", f"{topo.prefix}r{index}"


def root_commands(topo: Topology) -> list[str]:
    """`ip -batch` lines run in the host's root namespace: namespaces and veth pairs."""
    lines = [f"netns add {ns}" for ns in topo.namespaces]
    for index, host in enumerate(topo.hosts):
        inner, outer = _veth(topo, host, index)
        router = topo.ns("reg") if host.segment == "b" else topo.ns("nat")
        lines.append(
            f"link add {inner} netns {topo.ns(host.role)} type veth "
            f"peer name {outer} netns {router}"
        )
    lines.append(
        f"link add {topo.prefix}nl netns {topo.ns('nat')} type veth "
        f"peer name {topo.prefix}rl netns {topo.ns('reg')}"
    )
    return lines


def namespace_commands(topo: Topology) -> dict[str, list[str]]:
    """`ip -n NS -batch` lines per namespace: addresses, bridges, routes."""
    cmds: dict[str, list[str]] = {ns: ["link set lo up"] for ns in topo.namespaces}
    nat, reg = topo.ns("nat"), topo.ns("reg")
    bridges = {"inet": (nat, f"{NATIONAL_GATEWAY}/{INTERNET_PREFIX}")}
    for net in NETWORKS:
        router = reg if net.regional else nat
        bridges[net.key] = (router, f"{net.gateway}/{net.prefix_len}")
    for segment, (router, address) in bridges.items():
        bridge = f"{topo.prefix}b{segment}"
        cmds[router] += [
            f"link add {bridge} type bridge",
            f"addr add {address} dev {bridge}",
            f"link set {bridge} up",
        ]
    for index, host in enumerate(topo.hosts):
        inner, outer = _veth(topo, host, index)
        ns = topo.ns(host.role)
        plen = INTERNET_PREFIX if host.segment == "inet" else 24
        cmds[ns] += [f"addr add {ip}/{plen} dev {inner}" for ip in host.addresses]
        cmds[ns] += [f"link set {inner} up", f"route add default via {host.gateway}"]
        router = reg if host.segment == "b" else nat
        cmds[router] += [
            f"link set {outer} master {topo.prefix}b{host.segment}",
            f"link set {outer} up",
        ]
    cmds[nat] += [
        f"addr add {LINK_NATIONAL}/30 dev {topo.prefix}nl",
        f"link set {topo.prefix}nl up",
        f"route add {NETWORKS[1].cidr} via {LINK_REGIONAL}",
    ]
    cmds[reg] += [
        f"addr add {LINK_REGIONAL}/30 dev {topo.prefix}rl",
        f"link set {topo.prefix}rl up",
        f"route add default via {LINK_NATIONAL}",
    ]
    return cmds


def censor_rules(topo: Topology, router: str, queue: int) -> str:
    """An iptables-restore ruleset: queue every routed (not bridged) packet."""
    segments = ["inet", "a"] if router == topo.ns("nat") else ["b"]
    # Bridged traffic between two hosts of one segment (visible when br_netfilter
    # is loaded) is not the censor's business.
    same_segment = [
        f"-A FORWARD -i {topo.prefix}b{s} -o {topo.prefix}b{s} -j ACCEPT" for s in segments
    ]
    return "\n".join(
        [
            "*nat",
            ":PREROUTING ACCEPT [0:0]",
            ":INPUT ACCEPT [0:0]",
            ":OUTPUT ACCEPT [0:0]",
            ":POSTROUTING ACCEPT [0:0]",
            ":BW_MITM - [0:0]",
            "-A PREROUTING -j BW_MITM",
            "COMMIT",
            "*filter",
            ":INPUT ACCEPT [0:0]",
            ":FORWARD ACCEPT [0:0]",
            ":OUTPUT ACCEPT [0:0]",
            *same_segment,
            f"-A FORWARD -j NFQUEUE --queue-num {queue}",
            "COMMIT",
            "",
        ]
    )
