"""The outbound guard: what the resolver refuses, what it pins, literals, the allowlist.

No test resolves a name through real DNS: the resolver's lookup is replaced by a
scripted one that counts how often it was asked.
"""

from __future__ import annotations

import socket

import pytest

from collector.netsafety import (
    GuardedResolver,
    Unresolvable,
    UnsafeDestination,
    check_literal,
    check_url,
    is_public,
    parse_allowlist,
)
from probe_agent.protocol.addresses import AddressKind


class ScriptedResolver(GuardedResolver):
    """A guarded resolver whose lookups answer from a script, one answer per call."""

    def __init__(self, answers: list[list[str]], allow: str = "") -> None:
        super().__init__(parse_allowlist(allow))
        self.answers = answers
        self.lookups: list[str] = []

    async def addresses(self, host: str) -> list[str]:
        self.lookups.append(host)
        return self.answers[min(len(self.lookups), len(self.answers)) - 1]


async def test_a_public_name_is_answered_with_the_checked_addresses() -> None:
    resolver = ScriptedResolver([["1.1.1.1", "2606:4700:4700::1111", "1.1.1.1"]])
    results = await resolver.resolve("dir.example", 443, family=socket.AF_UNSPEC)
    assert [(r["host"], r["port"], r["family"]) for r in results] == [
        ("1.1.1.1", 443, socket.AF_INET),
        ("2606:4700:4700::1111", 443, socket.AF_INET6),
    ]
    v6 = await resolver.resolve("dir.example", 443, family=socket.AF_INET6)
    assert [r["host"] for r in v6] == ["2606:4700:4700::1111"]


async def test_one_private_address_among_public_ones_refuses_the_name() -> None:
    resolver = ScriptedResolver([["1.1.1.1", "10.0.0.1"]])
    with pytest.raises(UnsafeDestination, match="non-public") as info:
        await resolver.resolve("mixed.example", 443)
    assert str(info.value.address) == "10.0.0.1"
    assert info.value.reason is AddressKind.PRIVATE
    with pytest.raises(UnsafeDestination):
        await resolver.check("mixed.example")
    assert resolver.pinned("mixed.example") is None  # a refused answer is never pinned


@pytest.mark.parametrize(
    ("ip", "reason"),
    [
        ("64:ff9b::10.0.0.1", AddressKind.PRIVATE),  # NAT64 around a private address
        ("2002:a9fe:a9fe::1", AddressKind.LINK_LOCAL),  # 6to4 around the metadata address
        ("fec0::1", AddressKind.SITE_LOCAL),
        ("100.64.0.1", AddressKind.SHARED),
    ],
)
async def test_wrapped_and_odd_ranges_are_refused(ip: str, reason: AddressKind) -> None:
    with pytest.raises(UnsafeDestination) as info:
        await ScriptedResolver([[ip]]).resolve("odd.example", 443)
    assert info.value.reason is reason


async def test_check_pins_so_a_rebinding_answer_is_never_asked_for() -> None:
    resolver = ScriptedResolver([["1.1.1.1"], ["127.0.0.1"]])
    checked = await resolver.check("Rebind.Example.")
    assert [str(ip) for ip in checked] == ["1.1.1.1"]
    for _ in range(3):
        [result] = await resolver.resolve("rebind.example", 443)
        assert result["host"] == "1.1.1.1"
    assert resolver.lookups == ["rebind.example"]


async def test_an_unpinned_name_is_checked_at_every_resolve() -> None:
    # The long-lived alert session: a name that moves to a private address is refused.
    resolver = ScriptedResolver([["1.1.1.1"], ["127.0.0.1"]])
    [first] = await resolver.resolve("moving.example", 443)
    assert first["host"] == "1.1.1.1"
    with pytest.raises(UnsafeDestination):
        await resolver.resolve("moving.example", 443)
    assert resolver.lookups == ["moving.example", "moving.example"]


async def test_no_address_and_literals() -> None:
    with pytest.raises(Unresolvable, match="does not resolve"):
        await ScriptedResolver([[]]).resolve("empty.example", 443)
    literal = ScriptedResolver([])
    [result] = await literal.resolve("2606:4700:4700::1111", 443, family=socket.AF_UNSPEC)
    assert result["host"] == "2606:4700:4700::1111" and literal.lookups == []
    with pytest.raises(UnsafeDestination):
        await literal.resolve("169.254.169.254", 80)


async def test_the_allowlist_lets_the_lab_through() -> None:
    resolver = ScriptedResolver([["127.0.0.1", "::1"]], allow="127.0.0.0/8,::1/128")
    results = await resolver.resolve("lab.example", 8443, family=socket.AF_UNSPEC)
    assert [r["host"] for r in results] == ["127.0.0.1", "::1"]
    with pytest.raises(UnsafeDestination):
        await ScriptedResolver([["10.0.0.1"]], allow="127.0.0.0/8").resolve("x.example", 443)


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/hook",
        "https://[::1]:8443/",
        "https://[::ffff:10.0.0.1]/",
        "https://[64:ff9b::a9fe:a9fe]/latest/meta-data/",
        "https://[fe80::1%25eth0]/",
        "https://[fec0::1]/",
    ],
)
def test_private_literals_are_refused(url: str) -> None:
    with pytest.raises(UnsafeDestination, match="non-public"):
        check_literal(url, ())


def test_names_and_public_or_allowed_literals_pass_the_literal_check() -> None:
    check_literal("https://hooks.example/x", ())  # the resolver checks names
    check_literal("https://1.1.1.1/x", ())
    check_literal("http://127.0.0.1:8080/x", parse_allowlist("127.0.0.0/8"))


def test_is_public_and_check_url() -> None:
    assert is_public("1.1.1.1") and not is_public("10.0.0.1")
    assert is_public("10.0.0.1", parse_allowlist("0.0.0.0/0,::/0"))
    assert not is_public("not an address")
    check_url("https://hooks.example/x", allow_http=False)
    with pytest.raises(UnsafeDestination, match="https://"):
        check_url("http://hooks.example/x", allow_http=False)
    with pytest.raises(UnsafeDestination, match="credentials"):
        check_url("https://user:pw@hooks.example/x", allow_http=True)
