"""Target imports: every format from bytes, language filters, and fetching from loopback servers.

The fetching tests serve files from aiohttp servers on 127.0.0.1 (and 127.0.0.2)
with ``allow_private=True``; the refusal tests point ``fetch_directory`` at a
server that sets an event on every TCP connection it accepts, and assert, with a
short bounded wait, that the event was never set. No test
resolves a name through real DNS: ``localhost`` comes from /etc/hosts and the
rebinding test replaces the loop's ``getaddrinfo``.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from collector import netsafety
from collector.netsafety import GuardedResolver
from collector.services import importers
from collector.services.importers import (
    NO_LANGUAGE,
    FetchError,
    ImportedTarget,
    RefusedAddressError,
    fetch_directory,
    load_targets,
    parse_targets,
)
from probe_agent.protocol.addresses import ALL_ADDRESSES, PUBLIC, IPAddress, IPNetwork
from tests.support.probing import assert_no_lingering_tasks

pytestmark = pytest.mark.timeout(15)

# The seed list the collector ships (collector/data), as an installed package has it.
SEED_CSV = Path(str(resources.files("collector") / "data" / "targets-fediverse-zh.csv"))
SEED_DOMAINS = [
    "alive.bar",
    "m.cmx.im",
    "o3o.ca",
    "g0v.social",
    "mstdn.social",
    "mastodon.social",
    "mastodon.online",
    "mastodon.world",
    "mastodon.cloud",
    "mas.to",
    "pawoo.net",
    "mstdn.jp",
    "mstdn.io",
    "sn.angry.im",
    "m.otter.homes",
    "mast.dragon-fly.club",
    "misskey.io",
    "joinmastodon.org",
]


def _joinmastodon(domain: str, language: str, languages: list[str]) -> dict[str, Any]:
    """One server as api.joinmastodon.org/servers lists it."""
    return {
        "domain": domain,
        "version": "4.3.2",
        "description": "A server.",
        "languages": languages,
        "region": "asia",
        "categories": ["general"],
        "proxied_thumbnail": f"https://proxy.joinmastodon.org/{domain}.png",
        "blurhash": None,
        "total_users": 1200,
        "last_week_users": 80,
        "approval_required": False,
        "language": language,
        "category": "general",
    }


JOINMASTODON = [
    _joinmastodon("m.cmx.im", "zh", ["zh", "en"]),
    _joinmastodon("mastodon.social", "en", ["en"]),
    _joinmastodon("o3o.ca", "zh", ["zh"]),
    _joinmastodon("nolang.example", "", []),
]


def _observer(domain: str, detected: str | None) -> dict[str, Any]:
    """One node as a Fediverse Observer export or its GraphQL ``nodes`` query gives it."""
    return {
        "domain": domain,
        "name": domain.split(".", maxsplit=1)[0],
        "softwarename": "mastodon",
        "detectedlanguage": detected,
        "countryname": "Taiwan",
        "total_users": 42,
    }


OBSERVER = [
    _observer("a.example", "zh-CN"),
    _observer("b.example", "ZH"),
    _observer("c.example", "zh-Hant"),
    _observer("d.example", "zh_TW"),
    _observer("e.example", "en"),
    _observer("f.example", "zha"),  # Zhuang, not Chinese: a prefix match would take it
    _observer("g.example", None),
    _observer("h.example", ""),
]


# -- formats -------------------------------------------------------------------------------


def test_seed_csv_parses_fully() -> None:
    result = parse_targets(SEED_CSV.read_bytes(), source_name=str(SEED_CSV))
    assert result.format == "csv"
    assert result.domains == SEED_DOMAINS
    assert result.skipped == []
    assert all(t.languages == () for t in result.targets)


def test_csv_domain_column_anywhere_other_columns_ignored() -> None:
    data = (
        b"# exported list\n"
        b'kind,"Domain",note\n'
        b'mastodon,Mastodon.Social,"flagship, blocked"\n'
        b"\n"
        b"misskey,misskey.io,\n"
        b"website,,no domain on this row\n"
    )
    result = parse_targets(data)
    assert result.format == "csv"
    assert result.domains == ["mastodon.social", "misskey.io"]
    assert [raw for raw, _ in result.skipped] == [""]


@pytest.mark.parametrize("delimiter", [b"\t", b";"])
def test_csv_other_delimiters(delimiter: bytes) -> None:
    data = delimiter.join([b"domain", b"note"]) + b"\n" + delimiter.join([b"o3o.ca", b"x"])
    assert parse_targets(data).domains == ["o3o.ca"]


def test_csv_single_domain_column() -> None:
    assert parse_targets(b"domain\nalive.bar\n").domains == ["alive.bar"]


def test_plain_text() -> None:
    data = "# seed\n\n  alive.bar  \nm.cmx.im # blocked by SNI\n例子.测试\r\nBÜCHER.example.\n"
    result = parse_targets(data.encode())
    assert result.format == "text"
    assert result.domains == [
        "alive.bar",
        "m.cmx.im",
        "xn--fsqu00a.xn--0zwm56d",
        "xn--bcher-kva.example",
    ]
    assert result.skipped == []


def test_plain_text_only_comments_is_empty() -> None:
    result = parse_targets(b"# nothing yet\n\n")
    assert (result.targets, result.skipped, result.format) == ([], [], "text")


def test_utf8_bom_is_accepted() -> None:
    assert parse_targets("\ufeffdomain,kind\no3o.ca,mastodon\n".encode()).domains == ["o3o.ca"]


def test_joinmastodon() -> None:
    result = parse_targets(json.dumps(JOINMASTODON).encode())
    assert result.format == "json"
    assert result.targets == [
        ImportedTarget("m.cmx.im", ("zh", "en")),
        ImportedTarget("mastodon.social", ("en",)),
        ImportedTarget("o3o.ca", ("zh",)),
        ImportedTarget("nolang.example", ()),
    ]
    assert result.skipped == []


def test_joinmastodon_language_filter() -> None:
    result = parse_targets(json.dumps(JOINMASTODON).encode(), language="zh")
    assert result.domains == ["m.cmx.im", "o3o.ca"]
    assert result.skipped == [("nolang.example", NO_LANGUAGE)]
    assert result.filtered_out == 1


@pytest.mark.parametrize(
    "wrap",
    [
        lambda nodes: nodes,
        lambda nodes: {"nodes": nodes},
        lambda nodes: {"data": {"nodes": nodes}},
        lambda nodes: {"data": nodes},
    ],
    ids=["list", "nodes", "graphql", "data"],
)
def test_fediverse_observer_shapes(wrap: Callable[[list[dict[str, Any]]], Any]) -> None:
    result = parse_targets(json.dumps(wrap(OBSERVER)).encode())
    assert result.domains == [f"{c}.example" for c in "abcdefgh"]
    assert [t.languages for t in result.targets] == [
        ("zh-CN",),
        ("zh",),
        ("zh-Hant",),
        ("zh-TW",),
        ("en",),
        ("zha",),
        (),
        (),
    ]


@pytest.mark.parametrize("language", ["zh", "ZH", "Zh", " zh "])
def test_language_filter_matches_every_subtag_variant(language: str) -> None:
    result = parse_targets(json.dumps(OBSERVER).encode(), language=language)
    assert result.domains == ["a.example", "b.example", "c.example", "d.example"]
    assert result.skipped == [("g.example", NO_LANGUAGE), ("h.example", NO_LANGUAGE)]
    assert result.filtered_out == 2  # en and zha


@pytest.mark.parametrize("tag", ["zh", "ZH", "zh-CN", "zh-cn", "zh-Hant", "zh-hant-TW", "zh_TW"])
def test_each_tag_variant_is_chinese(tag: str) -> None:
    data = json.dumps([{"domain": "x.example", "detectedlanguage": tag}]).encode()
    assert parse_targets(data, language="zh").domains == ["x.example"]
    assert parse_targets(data, language="en").domains == []


@pytest.mark.parametrize("language", ["zh-CN", "", "z", "中文", "zh cn"])
def test_language_filter_must_be_a_primary_subtag(language: str) -> None:
    with pytest.raises(ValueError, match="primary language subtag"):
        parse_targets(json.dumps(OBSERVER).encode(), language=language)


@pytest.mark.parametrize(
    "data", [SEED_CSV.read_bytes(), b"alive.bar\no3o.ca\n"], ids=["csv", "text"]
)
def test_language_filter_without_language_information_is_an_error(data: bytes) -> None:
    with pytest.raises(ValueError, match="no language information"):
        parse_targets(data, language="zh")


def test_invalid_domains_are_skipped_with_reasons() -> None:
    data = b"alive.bar\nhttps://mastodon.social/\nlocalhost\n192.0.2.1\nbad_name!.example\no3o.ca\n"
    result = parse_targets(data)
    assert result.domains == ["alive.bar", "o3o.ca"]
    raws = [raw for raw, _ in result.skipped]
    assert raws == ["https://mastodon.social/", "localhost", "192.0.2.1", "bad_name!.example"]
    reasons = dict(result.skipped)
    assert "not a URL" in reasons["https://mastodon.social/"]
    assert "two labels" in reasons["localhost"]
    assert "IP address" in reasons["192.0.2.1"]
    assert all(reason.startswith("invalid domain") for reason in reasons.values())


def test_bad_json_items_are_skipped() -> None:
    items = [{"domain": "o3o.ca"}, "alive.bar", {"host": "x.example"}, {"domain": 7}]
    result = parse_targets(json.dumps(items).encode())
    assert result.domains == ["o3o.ca"]
    assert len(result.skipped) == 3
    assert all("'domain'" in reason for _, reason in result.skipped)


def test_duplicates_are_merged() -> None:
    items = [
        _observer("Mastodon.Social", "en"),
        _joinmastodon("o3o.ca", "zh", ["zh"]),
        _joinmastodon("mastodon.social.", "zh", ["zh", "en", "ja"]),
        _observer("o3o.ca", "zh-CN"),
    ]
    result = parse_targets(json.dumps(items).encode())
    assert result.targets == [
        ImportedTarget("mastodon.social", ("en", "zh", "ja")),
        ImportedTarget("o3o.ca", ("zh", "zh-CN")),
    ]


def test_duplicates_merge_before_the_language_filter() -> None:
    items = [_observer("mastodon.social", "en"), _observer("mastodon.social", "zh")]
    result = parse_targets(json.dumps(items).encode(), language="zh")
    assert result.targets == [ImportedTarget("mastodon.social", ("en", "zh"))]


def test_duplicates_in_text_and_idna_forms() -> None:
    data = "例子.测试\nxn--fsqu00a.xn--0zwm56d\n例子.测试.\nalive.bar\nALIVE.BAR\n".encode()
    assert parse_targets(data).domains == ["xn--fsqu00a.xn--0zwm56d", "alive.bar"]


def test_empty_json_list() -> None:
    result = parse_targets(b"[]", language="zh")
    assert (result.targets, result.skipped, result.format) == ([], [], "json")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("alive.bar\n".encode("utf-16"), "not UTF-8"),
        (b"alive.bar\n\xff\xfe\n", "not UTF-8"),
        (b"", "empty input"),
        (b" \n\t\n", "empty input"),
        (b"<!DOCTYPE html><html></html>", "HTML"),
        (b"kind,note\nmastodon,x\n", "without a 'domain' column"),
        (b"[{", "not valid JSON"),
        (b'{"servers": []}', "no list of instances"),
        (b'{"data": {"nodes": 3}}', "no list of instances"),
        (b"{}", r"keys \(none\)"),
        (b'["alive.bar", "o3o.ca"]', "no object in the JSON list has a 'domain'"),
        (b'[{"url": "misskey.io"}]', "no object in the JSON list has a 'domain'"),
        (b'{"errors": [{"message": "rate limited"}]}', "rate limited"),
    ],
)
def test_unrecognised_input_is_rejected(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_targets(data, source_name="list.txt")
    assert str(info.value).startswith("list.txt: ")


def test_every_error_says_what_was_expected() -> None:
    with pytest.raises(ValueError, match="expected CSV with a 'domain' column"):
        parse_targets(b'{"instances": {}}')


# -- address checks ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("fc00::1", "private"),
        ("169.254.169.254", "link-local"),
        ("100.64.0.1", "shared (carrier-grade NAT)"),
        ("0.0.0.0", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("224.0.0.1", "multicast"),
        ("fec0::1", "site-local"),
        ("::ffff:10.0.0.1", "private"),
        ("2002:7f00:1::", "loopback"),  # 6to4 around 127.0.0.1
        ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 around 169.254.169.254
    ],
)
async def test_refusals_name_the_reason(ip: str, reason: str) -> None:
    """A literal is checked without a lookup; the message says what kind of address it is."""
    expected = rf"^refusing to fetch from {re.escape(ip)}( \(.*\))?: a {re.escape(reason)} address"
    with pytest.raises(RefusedAddressError, match=expected):
        await importers._check_host(GuardedResolver(), ip)


# -- fetching ------------------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def loopback_only(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    """No name lookup but /etc/hosts' ``localhost`` and literals; no task left behind."""
    loop = asyncio.get_running_loop()
    real_getaddrinfo = loop.getaddrinfo

    async def local_getaddrinfo(host: str, *args: Any, **kwargs: Any) -> list[Any]:
        try:
            socket.inet_aton(host)  # numeric forms such as 127.1 never reach DNS
        except OSError:
            if host != "localhost":
                raise AssertionError(f"{host!r} would be looked up in DNS") from None
        return await real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", local_getaddrinfo)
    yield
    await assert_no_lingering_tasks()


@asynccontextmanager
async def serve(
    routes: dict[str, Handler], host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[str]:
    """An aiohttp server on loopback; yields its base URL."""
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, port))
    try:
        await web.SockSite(runner, sock).start()
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        await runner.cleanup()
        sock.close()


@asynccontextmanager
async def watched_server(
    host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[tuple[int, asyncio.Event]]:
    """A TCP server that sets its event on every connection it accepts (and closes it)."""
    connected = asyncio.Event()

    async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected.set()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(accept, host, port)
    try:
        yield server.sockets[0].getsockname()[1], connected
    finally:
        server.close()
        await server.wait_closed()


async def assert_never_connected(connected: asyncio.Event) -> None:
    """A connection already made is accepted within this bound on loopback."""
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(connected.wait(), timeout=0.2)


def _json_handler(doc: object, *, gzipped: bool = False) -> Handler:
    async def handler(_request: web.Request) -> web.Response:
        body = json.dumps(doc).encode()
        headers = {"Content-Type": "application/json"}
        if gzipped:
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=body, headers=headers)

    return handler


@pytest.mark.usefixtures("loopback_only")
@pytest.mark.parametrize("gzipped", [False, True])
async def test_fetch_json_directory(gzipped: bool) -> None:
    async with serve({"/servers": _json_handler(JOINMASTODON, gzipped=gzipped)}) as base:
        body = await fetch_directory(f"{base}/servers?language=zh", allow_private=True)
    assert json.loads(body) == JOINMASTODON


@pytest.mark.usefixtures("loopback_only")
async def test_fetch_through_localhost_and_a_redirect() -> None:
    async def old(_request: web.Request) -> web.Response:
        raise web.HTTPFound("/servers")

    routes = {"/old": old, "/servers": _json_handler(OBSERVER)}
    async with serve(routes) as base:
        url = base.replace("127.0.0.1", "localhost") + "/old"
        assert json.loads(await fetch_directory(url, allow_private=True)) == OBSERVER


@pytest.mark.usefixtures("loopback_only")
async def test_fetch_over_the_cap_announced() -> None:
    async def big(_request: web.Request) -> web.Response:
        return web.Response(body=b"a.example\n" * 1000)

    async with serve({"/big": big}) as base:
        with pytest.raises(ValueError, match="larger than the limit of 5000 bytes"):
            await fetch_directory(f"{base}/big", max_bytes=5000, allow_private=True)
        # Exactly at the cap is fine.
        assert (
            len(await fetch_directory(f"{base}/big", max_bytes=10000, allow_private=True)) == 10000
        )


@pytest.mark.usefixtures("loopback_only")
async def test_fetch_over_the_cap_while_streaming() -> None:
    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        try:
            for _ in range(100):
                await resp.write(b"a.example\n" * 100)
        except ConnectionError:
            pass  # the client gave up, as it should
        return resp

    async with serve({"/chunked": chunked}) as base:
        with pytest.raises(ValueError, match="larger than the limit"):
            await fetch_directory(f"{base}/chunked", max_bytes=5000, allow_private=True)


@pytest.mark.usefixtures("loopback_only")
async def test_fetch_cap_counts_decompressed_bytes() -> None:
    bomb = gzip.compress(b"a.example\n" * 100_000)
    assert len(bomb) < 10_000

    async def handler(_request: web.Request) -> web.Response:
        return web.Response(body=bomb, headers={"Content-Encoding": "gzip"})

    async with serve({"/bomb": handler}) as base:
        with pytest.raises(ValueError, match="larger than the limit"):
            await fetch_directory(f"{base}/bomb", max_bytes=100_000, allow_private=True)


@pytest.mark.usefixtures("loopback_only")
@pytest.mark.parametrize("status", [404, 500])
async def test_fetch_non_2xx(status: int) -> None:
    async def handler(_request: web.Request) -> web.Response:
        return web.Response(status=status, text="nope")

    async with serve({"/x": handler}) as base:
        with pytest.raises(FetchError, match=f"HTTP {status}") as info:
            await fetch_directory(f"{base}/x", allow_private=True)
    assert info.value.status == status


@pytest.mark.usefixtures("loopback_only")
async def test_fetch_redirect_loop_and_bad_location() -> None:
    async def loop(_request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    async def elsewhere(_request: web.Request) -> web.Response:
        raise web.HTTPFound("file:///etc/passwd")

    async with serve({"/loop": loop, "/elsewhere": elsewhere}) as base:
        with pytest.raises(FetchError, match="redirects"):
            await fetch_directory(f"{base}/loop", allow_private=True)
        with pytest.raises(FetchError, match="Location") as info:
            await fetch_directory(f"{base}/elsewhere", allow_private=True)
    assert info.value.status == 302


@pytest.mark.usefixtures("loopback_only")
@pytest.mark.parametrize("stage", ["headers", "body"])
async def test_fetch_timeout(stage: str) -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        if stage == "body":
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            await resp.write(b"a.example\n")
        await release.wait()
        return resp

    async with serve({"/slow": slow}) as base:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            with pytest.raises(FetchError, match=r"no complete answer within 0\.2 s"):
                await fetch_directory(f"{base}/slow", timeout=0.2, allow_private=True)
        finally:
            release.set()
        assert loop.time() - started < 2


@pytest.mark.usefixtures("loopback_only")
@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "localhost", "LOCALHOST.", "127.1", "[::ffff:127.0.0.1]", "[::1]"],
)
async def test_private_addresses_are_refused_without_connecting(host: str) -> None:
    async with watched_server() as (port, connected):
        with pytest.raises(RefusedAddressError, match="refusing to fetch"):
            await fetch_directory(f"http://{host}:{port}/servers")
        with pytest.raises(RefusedAddressError):
            await load_targets(f"http://{host}:{port}/servers", language="zh")
        await assert_never_connected(connected)


@pytest.mark.usefixtures("loopback_only")
async def test_a_redirect_to_a_private_address_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pretend 127.0.0.1 is public, so that the redirect's target (127.0.0.2) is
    # the only private address in play.
    real_classify = netsafety.classify

    def only_127_0_0_1_is_public(
        ip: str | IPAddress, allow: tuple[IPNetwork, ...] = ()
    ) -> netsafety.Classification:
        return PUBLIC if str(ip) == "127.0.0.1" else real_classify(ip, allow)

    monkeypatch.setattr(netsafety, "classify", only_127_0_0_1_is_public)
    async with watched_server("127.0.0.2") as (inner_port, connected):

        async def redirect(_request: web.Request) -> web.Response:
            raise web.HTTPFound(f"http://127.0.0.2:{inner_port}/servers")

        async with serve({"/servers": redirect}) as base:
            with pytest.raises(RefusedAddressError, match=r"127\.0\.0\.2: a loopback address"):
                await fetch_directory(f"{base}/servers")
        await assert_never_connected(connected)


@pytest.mark.usefixtures("loopback_only")
async def test_the_checked_address_is_the_one_connected_to(monkeypatch: pytest.MonkeyPatch) -> None:
    """DNS rebinding: a second lookup would answer 127.0.0.2; nothing may ask it."""
    lookups: list[str] = []

    async def rebinding_getaddrinfo(host: str, port: int, **_kw: object) -> list[Any]:
        if host != "rebind.example":
            raise AssertionError(f"unexpected lookup of {host}: no real DNS in tests")
        lookups.append(host)
        ip = "127.0.0.1" if len(lookups) == 1 else "127.0.0.2"
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (ip, port))]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", rebinding_getaddrinfo)

    async def old(_request: web.Request) -> web.Response:
        # A fresh connection for the second request: it must dial the pinned address.
        raise web.HTTPFound("/servers", headers={"Connection": "close"})

    routes = {"/old": old, "/servers": _json_handler(OBSERVER)}
    async with serve(routes) as base:
        port = int(base.rsplit(":", 1)[1])
        async with watched_server("127.0.0.2", port) as (_, rebound):
            body = await fetch_directory(f"http://rebind.example:{port}/old", allow_private=True)
            await assert_never_connected(rebound)
    assert json.loads(body) == OBSERVER
    assert lookups == ["rebind.example"]


@pytest.mark.usefixtures("loopback_only")
@pytest.mark.parametrize(
    "url", ["ftp://example.org/list", "file:///etc/passwd", "http:///x", "example.org"]
)
async def test_fetch_needs_an_http_url(url: str) -> None:
    with pytest.raises(ValueError, match="expected http"):
        await fetch_directory(url)


# -- load_targets --------------------------------------------------------------------------


@pytest.mark.usefixtures("loopback_only")
async def test_load_targets_from_a_path() -> None:
    result = await load_targets(str(SEED_CSV))
    assert result.domains == SEED_DOMAINS


@pytest.mark.usefixtures("loopback_only")
async def test_load_targets_from_a_missing_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        await load_targets(str(tmp_path / "nope.csv"))


@pytest.mark.usefixtures("loopback_only")
async def test_load_targets_errors_name_the_source(tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    path.write_bytes(b"alive.bar\n")
    with pytest.raises(ValueError, match=f"^{path}: "):
        await load_targets(str(path), language="zh")


@pytest.mark.usefixtures("loopback_only")
async def test_load_targets_from_a_url() -> None:
    async with serve(
        {"/api/v1/nodes": _json_handler({"data": {"nodes": OBSERVER}}, gzipped=True)}
    ) as base:
        result = await load_targets(f"{base}/api/v1/nodes", language="zh", allow_private=True)
    assert result.domains == ["a.example", "b.example", "c.example", "d.example"]
    assert result.skipped == [("g.example", NO_LANGUAGE), ("h.example", NO_LANGUAGE)]


@pytest.mark.usefixtures("loopback_only")
async def test_load_targets_refuses_other_schemes() -> None:
    with pytest.raises(ValueError, match="file path or an http"):
        await load_targets("ftp://example.org/list.txt")


@pytest.mark.usefixtures("loopback_only")
async def test_every_address_of_a_name_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    async def mixed_getaddrinfo(host: str, port: int, **_kw: object) -> list[Any]:
        assert host == "mixed.example"
        return [
            (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (ip, port))
            for ip in ("1.1.1.1", "10.0.0.1")
        ]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", mixed_getaddrinfo)
    with pytest.raises(RefusedAddressError, match=r"mixed\.example \(10\.0\.0\.1\): a private"):
        await importers._check_host(GuardedResolver(), "mixed.example")
    # Allowed, both addresses are kept, in order; nothing was dialled either way.
    resolver = GuardedResolver(ALL_ADDRESSES)
    addresses = await importers._check_host(resolver, "mixed.example.")
    assert [str(ip) for ip in addresses] == ["1.1.1.1", "10.0.0.1"]
    assert resolver.pinned("mixed.example") == addresses


async def test_a_public_literal_passes_the_check_without_a_lookup() -> None:
    addresses = await importers._check_host(GuardedResolver(), "2606:4700:4700::1111")
    assert [str(ip) for ip in addresses] == ["2606:4700:4700::1111"]
