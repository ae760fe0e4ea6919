"""The pages people read: server-rendered HTML, SVG badges (DESIGN, "Pages").

No front-end framework and nothing from another host: the templates
(``collector/api/templates``, Jinja2 with autoescape everywhere) and one
stylesheet (``/static/site.css``) are all a page loads, so pages load inside
China and tell nobody else about a visit. No script, no cookie; the language
comes from ``?lang=`` (``en`` or ``zh-Hans``), else ``Accept-Language``; every
page sets ``<html lang>`` and links to itself in the other language. The
answers are the public view (k-anonymous, rounded: collector/core/publication.py),
whatever token is sent.

Every page and badge carries a Content-Security-Policy without inline scripts
(``default-src 'none'``), ``X-Content-Type-Options``, ``Referrer-Policy:
no-referrer``, a short ``Cache-Control`` and a strong ``ETag`` (a matching
``If-None-Match`` gets 304).

Translations are gettext catalogs (collector/core/i18n.py); a language
without its catalog shows English.
"""

from __future__ import annotations

import hashlib
import unicodedata
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from feedgen.feed import FeedGenerator  # type: ignore[import-untyped]
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.responses import Response

from collector.api.deps import SessionDep
from collector.core.errors import NotFound
from collector.core.i18n import DEFAULT_LANGUAGE, LANGUAGES, supported, translations
from collector.core.models import TargetRow
from collector.core.publication import WORST_FIRST, Publication
from collector.core.settings import CollectorSettings
from collector.services.events import EventService
from collector.services.overview import TIMELINE_DAYS, OverviewService, country_states
from collector.services.targets import normalize
from collector.services.volunteers import reporting

router = APIRouter(include_in_schema=False)
TEMPLATES = Path(str(resources.files("collector") / "api" / "templates"))
STATIC = Path(str(resources.files("collector") / "api" / "static"))
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
STATE_CLASSES = ("ok", "blocked", "down", "unknown")
# The words for the states (never a colour alone); gettext marks them for the catalogs.
STATE_WORDS = {"ok": "reachable", "blocked": "blocked", "down": "down", "unknown": "unknown"}
METHOD_WORDS = {
    "dns": "DNS poisoning (forged answers)",
    "tcp_ip": "IP blocking (connections dropped or reset)",
    "tls": "SNI blocking (TLS reset when the name is seen)",
    "http": "HTTP tampering (block page or reset)",
}
PER_PAGE = 50


_ENVIRONMENTS: dict[str, Environment] = {}


def environment(language: str) -> Environment:
    """One template environment per language, its catalog installed once (requests
    run in threads: nothing is switched per request)."""
    if language not in _ENVIRONMENTS:
        env = Environment(
            loader=FileSystemLoader(TEMPLATES),
            autoescape=select_autoescape(default=True, default_for_string=True),
            extensions=["jinja2.ext.i18n"],
            trim_blocks=True,
            lstrip_blocks=True,
        )
        env.install_gettext_translations(translations(language), newstyle=True)  # type: ignore[attr-defined]
        _ENVIRONMENTS[language] = env
    return _ENVIRONMENTS[language]


def language_of(request: Request, lang: str | None) -> str:
    """``?lang=`` first, then the first Accept-Language we have, then English."""
    if lang in LANGUAGES:
        return lang
    for part in request.headers.get("accept-language", "").split(","):
        if (language := supported(part.split(";")[0])) is not None:
            return language
    return DEFAULT_LANGUAGE


def _headers(body: bytes, media_type: str, max_age: int) -> dict[str, str]:
    return {
        "Content-Security-Policy": CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": f"public, max-age={max_age}",
        "ETag": '"' + hashlib.sha256(body).hexdigest()[:32] + '"',
        "Content-Type": media_type,
        "Vary": "Accept-Language",
    }


def respond(request: Request, body: bytes, media_type: str, max_age: int = 60) -> Response:
    headers = _headers(body, media_type, max_age)
    if request.headers.get("if-none-match") == headers["ETag"]:
        return Response(status_code=304, headers={k: v for k, v in headers.items()
                                                   if k != "Content-Type"})  # fmt: skip
    return Response(body, headers=headers)


def render(request: Request, template: str, language: str, **context: Any) -> Response:
    query = dict(request.query_params)

    def link(**changes: Any) -> str:
        """This page's URL with *changes* to its query (the language switch, paging)."""
        merged = {**query, **{k: str(v) for k, v in changes.items() if v is not None}}
        return request.url.path + "?" + urlencode(merged)

    settings: CollectorSettings = request.app.state.settings
    now = datetime.now(UTC)

    def evidence_public(event: dict[str, Any]) -> bool:
        """Whether anyone may fetch the event's bundle yet (evidence_delay after detection)."""
        return _time(event["detected_at"]) + timedelta(seconds=settings.evidence_delay) <= now

    template_ = environment(language).get_template(template)
    page = template_.render(
        evidence_public=evidence_public,
        evidence_delay_hours=round(settings.evidence_delay / 3600),
        lang=language,
        languages=LANGUAGES,
        link=link,
        state_classes=STATE_CLASSES,
        base=base_url(request),
        **context,
    )
    return respond(request, page.encode(), "text/html; charset=utf-8")


def base_url(request: Request) -> str:
    """The collector's public URL (behind a proxy, what people type), else this request's."""
    settings: CollectorSettings = request.app.state.settings
    return settings.public_url.rstrip("/") or str(request.base_url).rstrip("/")


def public(request: Request) -> Publication:
    settings: CollectorSettings = request.app.state.settings
    return Publication.public(settings)


@router.get("/")
def index(
    request: Request,
    session: SessionDep,
    lang: str | None = None,
    q: Annotated[str, Query(max_length=253)] = "",
    cc: Annotated[str | None, Query(pattern=r"^[A-Za-z]{2}$")] = None,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> Response:
    """Instances x countries: the state in each, open events first."""
    language = language_of(request, lang)
    overview = OverviewService(public(request)).overview(
        session, search=q, cc=cc.upper() if cc else None, page=page, per_page=PER_PAGE
    )
    return render(request, "index.html", language, overview=overview, q=q,
                  cc=cc.upper() if cc else "")  # fmt: skip


def watched(session: Session, domain: str) -> tuple[str, str] | None:
    """(name, kind) of a target the collector watches, or None (the pages' 404)."""
    name = normalize(domain)
    kind = session.scalar(select(TargetRow.kind).where(TargetRow.domain == name))
    return (name, kind) if kind is not None else None


def not_watched(request: Request, language: str, domain: str) -> Response:
    return not_found(request, language, NotFound(f"no target {domain!r}", "err_unknown_target"))


@router.get("/i/{domain}")
def instance(
    request: Request,
    session: SessionDep,
    domain: Annotated[str, PathParam(max_length=253)],
    lang: str | None = None,
) -> Response:
    """One instance: its state per network, 30 days of events, mirrors, feed and badge."""
    language = language_of(request, lang)
    target = watched(session, domain)
    if target is None:
        return not_watched(request, language, domain)
    name, kind = target
    events = EventService(public(request))
    status = events.status(session, name)
    now = datetime.now(UTC)
    spans = OverviewService(public(request)).timeline(session, name, now)
    countries = sorted({n["cc"] for n in status["networks"]} | {s.cc for s in spans})
    recent = events.events(session, domain=name, limit=20)
    return render(
        request, "instance.html", language, status=status, spans=spans, countries=countries,
        kind=kind,
        days=TIMELINE_DAYS, events=recent, now=now,
        mirror_states={m["domain"]: country_states(m["networks"]) for m in status["mirrors"]},
    )  # fmt: skip


@router.get("/events")
def events_page(
    request: Request,
    session: SessionDep,
    lang: str | None = None,
    cc: Annotated[str | None, Query(pattern=r"^[A-Za-z]{2}$")] = None,
    state: Annotated[str | None, Query(pattern=r"^(open|closed)$")] = None,
    before: Annotated[int | None, Query(ge=1, lt=2**31)] = None,
) -> Response:
    """Block events, newest first, 50 a page (``before`` pages back)."""
    language = language_of(request, lang)
    events = EventService(public(request)).events(
        session, cc=cc.upper() if cc else None, state=state, limit=PER_PAGE, before_id=before
    )
    older = events[-1]["id"] if len(events) == PER_PAGE else None
    return render(request, "events.html", language, events=events, older=older,
                  cc=cc.upper() if cc else "", state=state or "")  # fmt: skip


@router.get("/events/{event_id}")
def event_page(
    request: Request,
    session: SessionDep,
    event_id: Annotated[int, PathParam(ge=1, lt=2**31)],
    lang: str | None = None,
) -> Response:
    """One event: what, where, since when, how to verify its evidence."""
    language = language_of(request, lang)
    try:
        event = EventService(public(request)).event(session, event_id)
    except NotFound as exc:
        return not_found(request, language, exc)
    return render(request, "event.html", language, event=event)


@router.get("/coverage")
def coverage_page(request: Request, session: SessionDep, lang: str | None = None) -> Response:
    """Where volunteers measure: countries, and the networks with enough of them."""
    language = language_of(request, lang)
    settings: CollectorSettings = request.app.state.settings
    since = datetime.now(UTC) - timedelta(seconds=settings.window_seconds)
    found = reporting(session, since)
    named = found.named(settings.publish_min_volunteers)
    countries = sorted(
        ((cc, len(v), sorted((asn, n) for (c, asn), n in named.items() if c == cc))
         for cc, v in found.countries.items()),
        key=lambda row: (-row[1], row[0]),
    )  # fmt: skip
    return render(request, "coverage.html", language, countries=countries,
                  k=max(1, settings.publish_min_volunteers))  # fmt: skip


@router.get("/about")
def about_page(request: Request, lang: str | None = None) -> Response:
    language = language_of(request, lang)
    settings: CollectorSettings = request.app.state.settings
    return render(request, "about.html", language, k=max(1, settings.publish_min_volunteers),
                  interval=int(settings.measure_interval))  # fmt: skip


def _feed(request: Request, language: str, title: str, path: str, events: list[dict[str, Any]]
          ) -> Response:  # fmt: skip
    """An Atom feed of *events*: one entry per event, updated when it changes."""
    strings = translations(language)
    base = base_url(request)
    feed = FeedGenerator()
    feed.id(base + path)
    feed.title(title)
    feed.link(href=base + path, rel="self")
    feed.link(href=base + "/", rel="alternate")
    feed.language(language)
    feed.updated(max((_time(e["updated_at"]) for e in events), default=datetime.now(UTC)))
    for event in reversed(events):  # feedgen prepends: oldest first in, newest first out
        entry = feed.add_entry()
        entry.id(f"{base}/events/{event['id']}")
        state = strings.gettext("blocked") if event["state"] == "open" else strings.gettext("ended")
        entry.title(f"{event['domain']} {event['cc']}: {state}")
        entry.link(href=f"{base}/events/{event['id']}?lang={language}")
        entry.updated(_time(event["updated_at"]))
        entry.published(_time(event["detected_at"]))
        methods = ", ".join(strings.gettext(METHOD_WORDS.get(m, m)) for m in event["methods"])
        entry.summary(f"{event['domain']} ({event['cc']}): {methods}")
    body = feed.atom_str(pretty=True)
    return respond(request, body, "application/atom+xml; charset=utf-8", max_age=300)


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@router.get("/feed.atom")
def feed_all(request: Request, session: SessionDep, lang: str | None = None) -> Response:
    language = language_of(request, lang)
    events = EventService(public(request)).events(session, limit=PER_PAGE)
    title = translations(language).gettext("Blockwatch: block events")
    return _feed(request, language, title, "/feed.atom", events)


@router.get("/i/{domain}/feed.atom")
def feed_instance(
    request: Request,
    session: SessionDep,
    domain: Annotated[str, PathParam(max_length=253)],
    lang: str | None = None,
) -> Response:
    language = language_of(request, lang)
    target = watched(session, domain)
    if target is None:
        return not_watched(request, language, domain)
    name, _kind = target
    events = EventService(public(request)).events(session, domain=name, limit=PER_PAGE)
    title = translations(language).gettext("Blockwatch: %(domain)s") % {"domain": name}
    return _feed(request, language, title, f"/i/{name}/feed.atom", events)


def text_width(text: str) -> int:
    """Pixels a badge needs for *text* at 11 px: wide (CJK) characters count double."""
    wide = sum(1 for c in text if unicodedata.east_asian_width(c) in ("W", "F"))
    return 10 + 7 * (len(text) - wide) + 12 * wide


BADGE_COLOURS = {"ok": "#2e7d32", "blocked": "#c62828", "down": "#a84300", "unknown": "#616161"}


@router.get("/i/{domain}/badge.svg")
def badge(
    request: Request,
    session: SessionDep,
    domain: Annotated[str, PathParam(max_length=253)],
    cc: Annotated[str | None, Query(pattern=r"^[A-Za-z]{2}$")] = None,
    lang: str | None = None,
) -> Response:
    """A shields-style badge: the instance's state (in one country, or the worst of all)."""
    language = language_of(request, lang)
    target = watched(session, domain)
    if target is None:
        return not_watched(request, language, domain)
    states = country_states(EventService(public(request)).networks(session, target[0]))
    if cc:
        state = states.get(cc.upper(), "unknown")
        label = cc.upper()
    else:
        state = min(states.values(), key=WORST_FIRST.index) if states else "unknown"
        label = "Blockwatch"
    text = translations(language).gettext(STATE_WORDS[state])
    svg = environment(language).get_template("badge.svg").render(
        label=label, text=text, colour=BADGE_COLOURS[state],
        label_width=text_width(label), text_width=text_width(text),
    )  # fmt: skip
    return respond(request, svg.encode(), "image/svg+xml; charset=utf-8", max_age=300)


STATIC_TYPES = {"site.css": "text/css; charset=utf-8", "favicon.svg": "image/svg+xml"}


@router.get("/static/{name}")
def static(request: Request, name: str) -> Response:
    """The stylesheet and the icon: the only files a page loads besides itself."""
    media_type = STATIC_TYPES.get(name)
    if media_type is None:
        return Response(status_code=404)
    return respond(request, (STATIC / name).read_bytes(), media_type, 3600)


@router.get("/favicon.ico")
def favicon(request: Request) -> Response:
    """Browsers ask for it whatever the page says: the same icon."""
    return static(request, "favicon.svg")


def not_found(request: Request, language: str, exc: NotFound) -> Response:
    """A 404 for people (the API keeps its JSON error)."""
    response = render(request, "not_found.html", language, message=exc.message)
    response.status_code = 404
    return response
