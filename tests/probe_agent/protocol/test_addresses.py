"""The one address classification: every class, every kind, every IPv4-in-IPv6 wrapper."""

from __future__ import annotations

import ipaddress
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from probe_agent.protocol.addresses import (
    ALL_ADDRESSES,
    WRAPPERS,
    AddressClass,
    AddressKind,
    Wrapper,
    classify,
    is_bogon,
    is_forged,
    is_routable,
    parse_networks,
)

P, A, PR, S = AddressClass.PUBLIC, AddressClass.ALLOWED, AddressClass.PRIVATE, AddressClass.SPECIAL
K = AddressKind


def _teredo(server: str, client: str) -> str:
    """RFC 4380: 2001:0::/32, the server in bits 32-63, the client inverted at the end."""
    value = (0x20010000 << 96) | (int(IPv4Address(server)) << 64)
    return str(IPv6Address(value | (int(IPv4Address(client)) ^ 0xFFFFFFFF)))


TABLE = [
    # IPv4
    ("1.1.1.1", P, None),
    ("45.76.9.9", P, None),
    ("127.0.0.1", PR, K.LOOPBACK),
    ("10.1.2.3", PR, K.PRIVATE),
    ("172.16.0.1", PR, K.PRIVATE),
    ("192.168.1.1", PR, K.PRIVATE),
    ("100.64.0.1", PR, K.SHARED),
    ("100.127.255.254", PR, K.SHARED),
    ("169.254.169.254", PR, K.LINK_LOCAL),
    ("0.0.0.0", S, K.UNSPECIFIED),
    ("0.1.2.3", S, K.RESERVED),
    ("192.0.0.1", S, K.RESERVED),
    ("192.0.0.9", P, None),  # PCP anycast: globally reachable inside 192.0.0.0/24
    ("192.0.2.1", S, K.DOCUMENTATION),
    ("198.18.0.1", S, K.BENCHMARKING),
    ("224.0.0.1", S, K.MULTICAST),
    ("240.0.0.1", S, K.RESERVED),
    ("255.255.255.255", S, K.RESERVED),
    # IPv6
    ("2606:4700:4700::1111", P, None),
    ("::1", PR, K.LOOPBACK),
    ("::", S, K.UNSPECIFIED),
    ("fc00::1", PR, K.PRIVATE),
    ("fd12:3456::1", PR, K.PRIVATE),
    ("fe80::1", PR, K.LINK_LOCAL),
    ("fe80::1%eth0", PR, K.LINK_LOCAL),  # a zone id is dropped, not a reason to fail
    ("fec0::1", PR, K.SITE_LOCAL),
    ("feff::1", PR, K.SITE_LOCAL),
    ("ff02::1", S, K.MULTICAST),
    ("2001:db8::1", S, K.DOCUMENTATION),
    ("3fff::1", S, K.DOCUMENTATION),
    ("2001:2::1", S, K.BENCHMARKING),
    ("2001:10::1", S, K.RESERVED),
    ("2001:4:112::1", P, None),  # AS112-v6: globally reachable inside 2001::/23
    ("100::1", S, K.RESERVED),
    ("4000::1", S, K.RESERVED),  # outside 2000::/3
    ("::a00:1", S, K.RESERVED),  # IPv4-compatible (deprecated): not a wrapper
    # IPv4-mapped
    ("::ffff:1.1.1.1", P, None),
    ("::ffff:10.0.0.1", PR, K.PRIVATE),
    ("::ffff:127.0.0.1", PR, K.LOOPBACK),
    # 6to4
    ("2002:101:101::1", P, None),
    ("2002:7f00:1::", PR, K.LOOPBACK),
    ("2002:c0a8:101::1", PR, K.PRIVATE),
    ("2002:6440:1::", PR, K.SHARED),
    # NAT64, well-known prefix
    ("64:ff9b::1.1.1.1", P, None),
    ("64:ff9b::10.0.0.1", PR, K.PRIVATE),
    ("64:ff9b::169.254.169.254", PR, K.LINK_LOCAL),
    ("64:ff9b::224.0.0.1", S, K.MULTICAST),
    # NAT64, local-use prefix: never public by itself
    ("64:ff9b:1::1.1.1.1", PR, K.LOCAL_NAT64),
    ("64:ff9b:1::10.0.0.1", PR, K.PRIVATE),
    # Teredo: both embedded addresses must be public
    (_teredo("65.54.227.120", "1.1.1.1"), P, None),
    (_teredo("65.54.227.120", "10.0.0.1"), PR, K.PRIVATE),
    (_teredo("127.0.0.1", "1.1.1.1"), PR, K.LOOPBACK),
    (_teredo("65.54.227.120", "192.168.0.1"), PR, K.PRIVATE),
    # Not addresses
    ("not an ip", AddressClass.INVALID, None),
    ("1.2.3.4%eth0", AddressClass.INVALID, None),
    ("", AddressClass.INVALID, None),
]


@pytest.mark.parametrize(("ip", "cls", "kind"), TABLE)
def test_classification_table(ip: str, cls: AddressClass, kind: AddressKind | None) -> None:
    found = classify(ip)
    assert (found.address_class, found.kind) == (cls, kind)
    assert is_routable(ip) == (cls is P)
    assert is_bogon(ip) == (cls in (PR, S))


def test_teredo_helper_matches_the_rfc_example() -> None:
    # RFC 4380 section 4: server 65.54.227.120, client 192.0.2.45 behind a NAT.
    address = IPv6Address(_teredo("65.54.227.120", "192.0.2.45"))
    assert address.teredo == (IPv4Address("65.54.227.120"), IPv4Address("192.0.2.45"))


def test_the_allowlist_makes_an_address_allowed() -> None:
    lab = parse_networks("127.0.0.0/8, fd00::/8")
    assert classify("127.0.1.1", lab).address_class is A
    assert classify("::ffff:127.0.1.1", lab).address_class is A  # through the wrapper
    assert classify("fd00::5", lab).address_class is A
    assert classify("10.0.0.1", lab).kind is K.PRIVATE  # outside the allowlist
    assert classify("1.1.1.1", lab).address_class is P  # public stays public
    assert not is_bogon("127.0.1.1", lab) and is_routable("127.0.1.1", lab)


def test_everything_is_allowed_by_all_addresses() -> None:
    for ip, cls, _kind in TABLE:
        if cls is not AddressClass.INVALID:
            assert is_routable(ip, ALL_ADDRESSES), ip


def test_parse_networks() -> None:
    assert parse_networks("") == ()
    assert parse_networks("10.1.2.3/8,,::1") == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    with pytest.raises(ValueError, match="does not appear to be"):
        parse_networks("not-a-network")


def test_forged_is_not_a_class() -> None:
    # The GFW's pool holds one reserved address: forged and a bogon at once.
    assert is_forged("243.185.187.39") and is_bogon("243.185.187.39")
    assert is_forged("8.7.198.45") and classify("8.7.198.45").address_class is P


def _wrap(wrapper: Wrapper, v4: IPv4Address, other: IPv4Address) -> IPv6Address:
    """*v4* (and, for Teredo, *other* as the server) inside *wrapper*'s prefix."""
    base = int(wrapper.prefix.network_address)
    if wrapper.name == "Teredo":
        return IPv6Address(base | (int(other) << 64) | (int(v4) ^ 0xFFFFFFFF))
    if wrapper.name == "6to4":
        return IPv6Address(base | (int(v4) << 80))
    return IPv6Address(base | int(v4))


public_v4 = st.ip_addresses(v=4).filter(lambda a: classify(a).address_class is P)


@given(
    wrapper=st.sampled_from(WRAPPERS),
    v4=public_v4,
    other=public_v4,
    allowlisted=st.booleans(),
)
def test_a_wrapped_public_address_is_public_iff_the_wrapper_is_allowed(
    wrapper: Wrapper, v4: IPv4Address, other: IPv4Address, allowlisted: bool
) -> None:
    allow = (wrapper.prefix,) if allowlisted else ()
    address = _wrap(wrapper, v4, other)
    assert wrapper.embedded(address)[-1] == v4
    assert is_routable(address, allow) == (wrapper.routable or allowlisted)


@given(wrapper=st.sampled_from(WRAPPERS), v4=public_v4, other=public_v4)
def test_a_wrapped_private_address_is_never_public(
    wrapper: Wrapper, v4: IPv4Address, other: IPv4Address
) -> None:
    for private in ("10.0.0.1", "127.0.0.1", "169.254.169.254", "100.64.0.1"):
        assert not is_routable(_wrap(wrapper, IPv4Address(private), other))
        if wrapper.name == "Teredo":  # the server's address counts too
            assert not is_routable(_wrap(wrapper, v4, IPv4Address(private)))
