"""The pages: server-rendered, self-contained (nothing from another host, no
script, no cookie), in the asked language, cached with ETags; the overview
pages, filters and puts open events first; an instance's page has its
networks, its 30-day timeline, its events and its badge."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any
from xml.etree import ElementTree

from fastapi.testclient import TestClient

from collector.core.db import session_scope
from collector.services.targets import TargetService
from tests.collector.analysis import builders as b
from tests.collector.detection.test_pass import World, world  # noqa: F401  (the fixture)

DOMAIN = b.DOMAIN


class Page(HTMLParser):
    """Every URL a page refers to, its <html lang>, and whether it has a script."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.lang: str | None = None
        self.scripts = 0
        self.inline_styles = 0
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "html":
            self.lang = found.get("lang")
        if tag == "script":
            self.scripts += 1
        if "style" in found or tag == "style":
            self.inline_styles += 1
        for name in ("href", "src", "action"):
            if found.get(name):
                self.urls.append(str(found[name]))


def get(client: TestClient, path: str, **headers: str) -> Any:
    answer = client.get(path, headers=headers)
    assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])
    return answer


def assert_self_contained(text: str) -> Page:
    page = Page(text)
    assert page.scripts == 0 and page.inline_styles == 0
    assert all(u.startswith("/") for u in page.urls), [u for u in page.urls if u[0] != "/"]
    return page


def test_the_overview_in_english_and_chinese(world: World) -> None:  # noqa: F811
    world.open_event()
    answer = get(world.client, "/")
    assert answer.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in answer.headers["content-security-policy"]
    assert "script-src" not in answer.headers["content-security-policy"]
    assert "set-cookie" not in answer.headers
    page = assert_self_contained(answer.text)
    assert page.lang == "en"
    assert DOMAIN in answer.text and "blocked" in answer.text
    assert 'href="/?lang=zh-Hans"' in answer.text  # the language switch
    assert Page(get(world.client, "/?lang=zh-Hans").text).lang == "zh-Hans"
    assert Page(get(world.client, "/", **{"Accept-Language": "zh-CN,zh;q=0.9"}).text).lang == (
        "zh-Hans"
    )
    # Cached: the same page again is a 304 with its ETag.
    again = world.client.get("/", headers={"If-None-Match": answer.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


def test_open_events_first_search_country_and_pages(world: World) -> None:  # noqa: F811
    world.open_event()
    with session_scope(world.sessions) as s:
        TargetService().add(s, [f"a{i:03d}.example" for i in range(60)])
    text = get(world.client, "/").text
    assert text.index(DOMAIN) < text.index("a000.example")  # the blocked one first
    assert 'rel="next"' in text and "a059.example" not in text  # 50 a page
    second = get(world.client, "/?page=2").text
    assert "a059.example" in second and 'rel="prev"' in second
    found = get(world.client, "/?q=a042").text
    assert "a042.example" in found and "a041.example" not in found
    only_cn = get(world.client, "/?cc=cn").text
    assert DOMAIN in only_cn and "a000.example" not in only_cn  # never measured in CN
    assert "No instance matches." in get(world.client, "/?q=nothing-like-it").text


def test_an_instance_page_timeline_events_and_badge(world: World) -> None:  # noqa: F811
    event = world.open_event()
    answer = get(world.client, f"/i/{DOMAIN}")
    assert_self_contained(answer.text)
    text = answer.text
    assert "SNI blocking" in text and "DNS poisoning" in text  # methods in plain words
    assert '<svg class="timeline"' in text and 'class="span open"' in text
    assert f'href="/events/{event["id"]}?lang=en"' in text
    # Detected just now: its bundle is not public yet (evidence_delay), so no dead link.
    assert f'href="/api/v1/events/{event["id"]}/evidence"' not in text
    assert "mirror.bar" in text  # its group's mirror
    # The feed and badge snippets, and the way to subscribe (the ownership challenge).
    assert f"http://testserver/i/{DOMAIN}/feed.atom" in text
    assert f'"domain": "{DOMAIN}", "channel": "webhook"' in text
    assert f"_blockwatch.{DOMAIN} TXT" in text
    badge = get(world.client, f"/i/{DOMAIN}/badge.svg")
    assert badge.headers["content-type"].startswith("image/svg+xml")
    assert ">blocked</text>" in badge.text
    assert ">CN</text>" in get(world.client, f"/i/{DOMAIN}/badge.svg?cc=CN").text
    assert ">unknown</text>" in get(world.client, f"/i/{DOMAIN}/badge.svg?cc=IR").text
    missing = world.client.get("/i/not-watched.example")
    assert missing.status_code == 404 and "Not found" in missing.text
    assert missing.headers["content-type"].startswith("text/html")
    css = get(world.client, "/static/site.css")
    assert css.headers["content-type"].startswith("text/css") and "@import" not in css.text


def test_markup_in_a_domain_is_escaped(world: World) -> None:  # noqa: F811
    answer = world.client.get("/?q=<script>alert(1)</script>")
    assert answer.status_code == 200
    assert "<script>" not in answer.text and "&lt;script&gt;" in answer.text


def test_events_an_event_and_its_evidence_instructions(world: World) -> None:  # noqa: F811
    event = world.open_event()
    listing = get(world.client, "/events")
    assert_self_contained(listing.text)
    assert f'href="/events/{event["id"]}?lang=en"' in listing.text
    assert DOMAIN not in get(world.client, "/events?state=closed").text
    page = get(world.client, f"/events/{event['id']}")
    assert_self_contained(page.text)
    text = page.text
    assert "SNI blocking" in text and "AS4134" in text and "3 volunteers saw it." in text
    assert "blockwatch-probe verify bundle.json --collector-key blockwatch.json" in text
    assert f"http://testserver/api/v1/events/{event['id']}/evidence" in text
    assert "The bundle becomes public 24 hours after the event opened" in text
    assert world.client.get("/events/999999").status_code == 404


def test_coverage_about_and_feeds(world: World) -> None:  # noqa: F811
    world.open_event()
    for probe in world.probes:  # they report: a check-in each
        answer = world.client.post("/api/v1/probes/checkin", json=probe.checkin())
        assert answer.status_code == 200, answer.text
    coverage = get(world.client, "/coverage")
    assert_self_contained(coverage.text)
    assert "<td>CN</td><td>3</td>" in coverage.text.replace("\n", "").replace("  ", "")
    assert "Run a probe" in coverage.text
    assert "Times on these pages are rounded down to" in get(world.client, "/about").text
    feed = get(world.client, "/feed.atom")
    assert feed.headers["content-type"].startswith("application/atom+xml")
    root = ElementTree.fromstring(feed.content)
    entries = root.findall("{http://www.w3.org/2005/Atom}entry")
    assert len(entries) == 1 and DOMAIN in (entries[0].findtext(ATOM + "title") or "")
    mine = ElementTree.fromstring(get(world.client, f"/i/{DOMAIN}/feed.atom").content)
    assert len(mine.findall(ATOM + "entry")) == 1
    assert world.client.get("/i/not-watched.example/feed.atom").status_code == 404
    zh = ElementTree.fromstring(get(world.client, "/feed.atom?lang=zh-Hans").content)
    assert "被封锁" in (zh.findall(ATOM + "entry")[0].findtext(ATOM + "title") or "")


ATOM = "{http://www.w3.org/2005/Atom}"


def test_the_collectors_own_name_blocked_shows_on_the_pages(world: World) -> None:  # noqa: F811
    from datetime import UTC, datetime

    from collector.core.models import NetworkStateRow

    since = datetime(2026, 12, 3, 6, 47, 12, tzinfo=UTC)
    with session_scope(world.sessions) as s:
        TargetService().add(s, ["collector.example"], kind="collector")
        s.add(NetworkStateRow(domain="collector.example", cc="CN", asn=4134,
                              state="blocked", methods='["dns"]', since=since, probes=3,
                              updated_at=since))  # fmt: skip
    index = get(world.client, "/").text
    # A banner, not a row of the matrix; its time rounded as every public time.
    assert "This collector (collector.example) is blocked in CN since 2026-12-03 06:45 UTC" in index
    assert 'href="/i/collector.example?lang=en">collector.example</a></th>' not in index
    page = get(world.client, "/i/collector.example").text
    assert "This is a name of this collector itself." in page
    zh = get(world.client, "/?lang=zh-Hans").text
    assert "collector.example\uff09\u81ea 2026-12-03 06:45 UTC \u8d77\u5728 CN" in zh  # 自 ... 起在
