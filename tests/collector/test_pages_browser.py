"""The pages in a real browser: Debian's Chromium, driven by Selenium and chromedriver.

A collector process serves a database with a blocked instance (an open event
and a closed one), its mirror, an instance down for everyone and a healthy one.
Every page, in English and in Chinese, must load with no console error and no
request to another host (Chromium resolves nothing but 127.0.0.1: no packet can
leave the machine), with its ``<html lang>``; links must resolve; the language
switch must lead to the other language; the timeline and the badge must show;
axe-core (from npm, injected through the driver, not the page) must find no
serious or critical accessibility violation. A screenshot of each page is saved
under ``test-artifacts/screenshots`` (a CJK font is installed by the Makefile).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from collector.core.db import make_engine, make_session_factory, migrate, session_scope
from collector.core.models import EventRow, NetworkStateRow
from collector.services.targets import TargetService
from tests.collector.serving import ServedCollector

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("BLOCKWATCH_ARTIFACTS", ROOT / "test-artifacts")) / "screenshots"
AXE = Path(os.environ.get("BLOCKWATCH_AXE", ROOT / ".venv/share/axe-core/axe.min.js"))
PAGES = ["/", "/i/alive.bar", "/i/down.example", "/events", "/events/1", "/coverage", "/about"]


def _need(path: str | Path, what: str) -> None:
    if not Path(path).exists():
        if os.environ.get("CI"):
            raise AssertionError(f"{what} is missing: `make debs` installs it")
        pytest.skip(f"{what} is missing ({path})")


def fill(url: str) -> None:
    engine = make_engine(url)
    migrate(engine)
    sessions = make_session_factory(engine)
    now = datetime.now(UTC)
    with session_scope(sessions) as s:
        targets = TargetService()
        targets.add(s, ["alive.bar"], group="alive")
        targets.add(s, ["mirror.alive.bar"], group="alive", kind="mirror")
        targets.add(s, ["down.example", "fine.example"])
        for domain, state, methods in (("alive.bar", "blocked", '["dns", "tls"]'),
                                       ("mirror.alive.bar", "ok", "[]"),
                                       ("down.example", "down", "[]"),
                                       ("fine.example", "ok", "[]")):  # fmt: skip
            for asn in (4134, 4837):
                s.add(NetworkStateRow(domain=domain, cc="CN", asn=asn, state=state,
                                      methods=methods if asn == 4134 else "[]",
                                      since=now - timedelta(hours=5), probes=3,
                                      updated_at=now))  # fmt: skip
        spans = [(now - timedelta(days=12), now - timedelta(days=9), "closed"),
                 (now - timedelta(hours=5), None, "open")]  # fmt: skip
        for started, ended, state in spans:
            s.add(EventRow(domain="alive.bar", cc="CN", state=state, scope="national",
                           asns="[4134, 4837]", methods='["dns", "tls"]', volunteers="[]",
                           evidence="[]", started_at=started, detected_at=started,
                           updated_at=ended or now, last_blocked_at=ended or now,
                           ended_at=ended, closed_at=ended, rule_version="t",
                           forged_pool_version="t", reporting_probes=6))  # fmt: skip
    engine.dispose()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedCollector]:
    directory = tmp_path_factory.mktemp("browser")
    url = f"sqlite:///{directory / 'collector.db'}"
    fill(url)
    collector = ServedCollector(url, directory / "collector.log", ["--no-detector", "--no-control"])
    collector.start()
    yield collector
    collector.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    _need(chromium or "/usr/bin/chromium", "chromium")
    _need(driver or "/usr/bin/chromedriver", "chromium-driver")
    options = Options()
    options.binary_location = str(chromium)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000",
                 "--disable-dev-shm-usage",  # containers often have a tiny /dev/shm
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-default-apps", "--no-first-run",
                 "--disable-features=Translate,OptimizationHints,MediaRouter",
                 # Every name resolves to nothing but loopback: no packet leaves the machine.
                 "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    chrome = webdriver.Chrome(options=options, service=Service(str(driver)))
    chrome.set_page_load_timeout(30)
    yield chrome
    chrome.quit()


def requests_made(browser: Any) -> list[str]:
    urls = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def axe_violations(browser: Any) -> list[dict[str, Any]]:
    browser.execute_script(AXE.read_text())
    result: dict[str, Any] = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {resultTypes: ['violations']}).then(r => done(r.violations))"
        ".catch(e => done([{id: 'axe-error', impact: 'critical', help: String(e)}]));"
    )
    return [v for v in result if v.get("impact") in ("serious", "critical")]  # type: ignore[union-attr]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("lang", ["en", "zh-Hans"])
def test_every_page_in_a_real_browser(served: ServedCollector, browser: Any, lang: str) -> None:
    _need(AXE, "axe-core (make fetches it from npm)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    problems: dict[str, Any] = {}
    links: set[str] = set()
    for path in PAGES:
        browser.get_log("browser"), requests_made(browser)  # drop what came before
        browser.get(f"{served.url}{path}?lang={lang}")
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        elsewhere = [u for u in requests_made(browser) if not u.startswith(served.url)]
        html_lang = browser.execute_script("return document.documentElement.lang")
        violations = axe_violations(browser)
        name = (path.strip("/").replace("/", "_") or "index") + f".{lang}.png"
        browser.save_screenshot(str(ARTIFACTS / name))
        links |= {a.get_attribute("href") for a in browser.find_elements("css selector", "a[href]")}
        if errors or elsewhere or html_lang != lang or violations:
            problems[path] = {"console": errors, "elsewhere": elsewhere, "lang": html_lang,
                              "axe": [(v["id"], v["help"]) for v in violations]}  # fmt: skip
    assert problems == {}, problems
    broken = {}
    for link in sorted(links):
        assert link.startswith(served.url), link  # nothing points elsewhere
        status = httpx.get(link, timeout=10).status_code
        if status != 200:
            broken[link] = status
    assert broken == {}, broken


@pytest.mark.timeout(300)
def test_the_language_switch_the_timeline_and_the_badge(
    served: ServedCollector, browser: Any
) -> None:
    browser.get(f"{served.url}/i/alive.bar?lang=en")
    browser.find_element("css selector", "a[hreflang='zh-Hans']").click()
    deadline = time.monotonic() + 10
    while browser.execute_script("return document.documentElement.lang") != "zh-Hans":
        assert time.monotonic() < deadline, browser.current_url
        time.sleep(0.1)
    assert "lang=zh-Hans" in browser.current_url and "封锁事件" in browser.page_source
    timeline = browser.find_element("css selector", "svg.timeline")
    assert timeline.is_displayed() and timeline.size["width"] > 300
    spans = browser.find_elements("css selector", "svg.timeline rect.span")
    assert len(spans) == 2  # the closed event 12 days ago and the open one
    badge = browser.find_element("css selector", "img[src*='badge.svg']")
    assert browser.execute_script("return arguments[0].naturalWidth", badge) > 40
