"""Input validation: IDNA names, resolver endpoints, CIDRs, collector URLs, declared networks."""

from __future__ import annotations

import idna
import pytest
from hypothesis import given
from hypothesis import strategies as st

from probe_agent.protocol.errors import InvalidDomainError, InvalidOptionError, InvalidResolverError
from probe_agent.protocol.inputs import (
    DeclaredNetwork,
    Endpoint,
    _plain_ascii,
    normalize_domain,
    parse_collector_url,
    parse_declared,
    parse_endpoint,
    parse_network,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Mastodon.Social", "mastodon.social"),
        ("alive.bar.", "alive.bar"),
        ("  o3o.ca ", "o3o.ca"),
        ("例子.测试", "xn--fsqu00a.xn--0zwm56d"),
        ("bücher.example", "xn--bcher-kva.example"),
    ],
)
def test_normalize_domain(raw: str, expected: str) -> None:
    assert normalize_domain(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "localhost",
        "bad_name!.example",
        "-x.example",
        "x-.example",
        "a" * 64 + ".example",
        ("abc." * 70) + "example",
        "https://mastodon.social/",
        "mastodon.social:443",
        "192.0.2.1",
        "example.123",
        "a..b",
    ],
)
def test_invalid_domains_raise(raw: str) -> None:
    with pytest.raises(InvalidDomainError, match="invalid domain"):
        normalize_domain(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("8.8.8.8", Endpoint("8.8.8.8", 53)),
        ("127.0.0.1:5353", Endpoint("127.0.0.1", 5353)),
        ("::1", Endpoint("::1", 53)),
        ("[2001:db8::1]:5300", Endpoint("2001:db8::1", 5300)),
        ("[::1]", Endpoint("::1", 53)),
    ],
)
def test_parse_endpoint(raw: str, expected: Endpoint) -> None:
    assert parse_endpoint(raw) == expected


def test_endpoint_str_brackets_ipv6() -> None:
    assert str(Endpoint("2001:db8::1", 53)) == "[2001:db8::1]:53"
    assert str(Endpoint("127.0.0.1", 53)) == "127.0.0.1:53"


@pytest.mark.parametrize(
    "raw", ["dns.google", "1.2.3.4:0", "1.2.3.4:70000", "[::1", "[::1]x", "1.2.3.4:ab"]
)
def test_invalid_endpoints_raise(raw: str) -> None:
    with pytest.raises(InvalidResolverError):
        parse_endpoint(raw)


def test_parse_network() -> None:
    assert str(parse_network("127.0.0.0/8")) == "127.0.0.0/8"
    with pytest.raises(InvalidOptionError):
        parse_network("not-a-net")


@pytest.mark.parametrize(
    "url",
    [
        "ftp://collector.example",
        "collector.example",
        "https://",
        "https://user:pw@collector.example",
        "https://collector.example/?x=1",
        "https://collector.example:99999",
        "https://collector.example:0",
    ],
)
def test_invalid_collector_urls(url: str) -> None:
    with pytest.raises(InvalidOptionError, match="invalid collector URL"):
        parse_collector_url(url)


def test_collector_url_normalization() -> None:
    assert parse_collector_url(" https://c.example/bw/ ") == "https://c.example/bw"
    assert parse_collector_url("http://[::1]:8000") == "http://[::1]:8000"


@pytest.mark.parametrize(
    ("cc", "asn", "message"),
    [
        ("DE", None, "go together"),
        (None, 3320, "go together"),
        ("DEU", 3320, "invalid country"),
        ("D1", 3320, "invalid country"),
        ("DE", 0, "invalid ASN"),
        ("DE", 2**32 - 1, "invalid ASN"),
    ],
)
def test_invalid_declared_network(cc: str | None, asn: int | None, message: str) -> None:
    with pytest.raises(InvalidOptionError, match=message):
        parse_declared(cc, asn)


def test_declared_network() -> None:
    assert parse_declared(None, None) is None
    declared = parse_declared(" de ", 3320)
    assert declared == DeclaredNetwork("DE", 3320)
    assert declared.to_json() == {"cc": "DE", "asn": 3320}


# Names built to hit the edges of the ASCII fast path: case, hyphens (leading,
# trailing, in the reserved third and fourth positions), xn-- labels valid and
# not, characters IDNA refuses, empty labels, a newline inside a label.
_EDGE_LABELS = st.sampled_from(
    [
        "a",
        "Ab",
        "mastodon",
        "x-y",
        "-x",
        "x-",
        "ab--cd",
        "xn--bcher-kva",
        "XN--Bcher-Kva",
        "xn--zz",
        "xn--",
        "a_b",
        "a\nb",
        "b\n",
        "",
        "9",
        "a" * 63,
        "a" * 64,
        "é",
    ]
)
_ASCII_LABELS = st.text(alphabet="abcXYZ019-_.", min_size=1, max_size=12)


@given(st.lists(_EDGE_LABELS | _ASCII_LABELS, min_size=1, max_size=4))
def test_the_ascii_fast_path_agrees_with_idna(labels: list[str]) -> None:
    name = ".".join(labels)
    fast = _plain_ascii(name)
    try:
        slow: str | None = idna.encode(name, uts46=True, transitional=False).decode().lower()
    except (idna.IDNAError, UnicodeError):
        slow = None
    # The fast path may decline (None) and leave the name to idna, but when it
    # answers it gives what idna gives, and never accepts what idna refuses.
    if fast is not None:
        assert fast == slow


def test_the_ascii_fast_path_takes_plain_names_and_declines_a_labels() -> None:
    assert _plain_ascii("Mastodon.Social") == "mastodon.social"
    assert _plain_ascii("t0001.bench.test") == "t0001.bench.test"
    assert _plain_ascii("xn--bcher-kva.example") is None
    assert _plain_ascii("bücher.example") is None
    assert _plain_ascii("a\n.example") is None


def test_an_over_long_plain_name_is_left_to_idna_and_refused() -> None:
    """Four labels of 63 letters are 255 characters: idna refuses them, and the fast
    path must not answer for it (hypothesis found this one with idna 3.20)."""
    name = ".".join(["a" * 63] * 4)
    assert _plain_ascii(name) is None
    with pytest.raises(InvalidDomainError, match="too long"):
        normalize_domain(name)
    assert normalize_domain(".".join(["a" * 63] * 3 + ["a" * 61])) == ".".join(
        ["a" * 63] * 3 + ["a" * 61]
    )  # 253 characters: still a name
