"""The collector's own reachability, measured by its probes like a target.

Once a censor notices the network it blocks the collector (OONI's API and test
helpers were blocked in China on 2023-07-07), and an operator who learns of it
only from the silence of their probes learns late. So the collector's own host
names (``--public-url``'s and every ``--endpoint``'s) are targets of kind
``collector``: probes get them at check-in with the port they are served on,
measure them each round like any target (DNS, TCP, TLS with the decoy, HTTP),
keep the measurements in their spool while the collector is out of reach and
submit them when they get through; the control prober measures them too, and
the detector judges them with the same rules. ``GET /status/<collector name>``
then says "blocked in CN since ..." from the probes' own evidence, and an
operator can subscribe to their collector like to any instance.

HTTPS names only: an IP-literal URL has no DNS to measure, a ``.onion`` is
reached through Tor, not measured, and a plain-HTTP URL (a lab's) has no TLS to
measure like an instance's. The names come from the settings, so the way to
stop measuring one is to drop its ``--endpoint``: at the next start it is
removed like any target.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from collector.core.db import session_scope
from collector.core.keys import CollectorKey
from collector.core.models import TargetRow
from collector.core.settings import CollectorSettings
from collector.services.targets import COLLECTOR_KIND, TargetService
from probe_agent.protocol.addresses import is_address
from probe_agent.protocol.endpoints import Endpoint, EndpointList, signed
from probe_agent.protocol.errors import InvalidDomainError
from probe_agent.protocol.inputs import normalize_domain
from probe_agent.protocol.times import rfc3339

log = logging.getLogger("blockwatch.collector.reachability")

SOURCE = "collector"  # the targets' source: registered by the collector itself


@dataclass(frozen=True, slots=True)
class OwnName:
    """One of the collector's host names and the port its URL serves on."""

    domain: str
    port: int
    url: str


def endpoints(settings: CollectorSettings) -> list[Endpoint]:
    """The collector's ways in: the public URL first, then the endpoints, each once."""
    found = [Endpoint(settings.public_url)] if settings.public_url else []
    found += [Endpoint.parse(e) for e in settings.endpoints.split(",") if e]
    return list(dict.fromkeys(found))


def urls(settings: CollectorSettings) -> list[str]:
    """The collector's base URLs, each once."""
    return list(dict.fromkeys(e.url for e in endpoints(settings)))


def signed_endpoints(
    settings: CollectorSettings, key: CollectorKey, issued: datetime
) -> dict[str, str] | None:
    """The check-in answer's ``endpoints``: the list signed with the collector key
    (probe_agent/protocol/endpoints.py), or None when the collector has no URL to hand
    out. *issued*: the process's start, so that a probe keeps the newest replica's."""
    found = endpoints(settings)
    if not found:
        return None
    listed = EndpointList(key.key_id, rfc3339(issued, "seconds"), tuple(found))
    return signed(listed, key.public_key, key.sign)


def own_names(settings: CollectorSettings) -> list[OwnName]:
    """The host names to measure, each once (its first URL's port)."""
    names: dict[str, OwnName] = {}
    for url in urls(settings):
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.scheme != "https" or not host or is_address(host):
            continue
        try:
            domain = normalize_domain(host)
        except InvalidDomainError:
            log.warning("a collector URL's host is not a valid name: not measured")
            continue
        if domain.endswith(".onion") or domain in names:
            continue
        names[domain] = OwnName(domain, parts.port or 443, url)
    return list(names.values())


def own_domains(settings: CollectorSettings) -> frozenset[str]:
    return frozenset(n.domain for n in own_names(settings))


def ports(settings: CollectorSettings) -> dict[str, int]:
    """Each of the collector's names with the port it is served on: measured there
    (by the probes and the control alike), whatever port the instances use."""
    return {n.domain: n.port for n in own_names(settings)}


def register(session: Session, settings: CollectorSettings) -> list[str]:
    """Make the collector's names targets of kind ``collector``; retire the ones it
    no longer has (removed, like any target, so spooled measurements still count).
    Answers the domains registered."""
    names = [n.domain for n in own_names(settings)]
    service = TargetService()
    if names:
        service.add(session, names, kind=COLLECTOR_KIND, source=SOURCE)
    stale = session.scalars(
        select(TargetRow.domain).where(
            TargetRow.kind == COLLECTOR_KIND,
            TargetRow.removed_at.is_(None),
            TargetRow.domain.not_in(names) if names else TargetRow.domain.is_not(None),
        )
    ).all()
    for domain in stale:
        service.remove(session, domain)
    return names


def register_at_startup(settings: CollectorSettings, sessions: sessionmaker[Session]) -> None:
    """``register`` once per process; a replica starting at the same moment may insert
    the same name first (a unique violation): then its rows are already there."""
    for attempt in (1, 2):
        try:
            with session_scope(sessions) as session:
                names = register(session, settings)
        except IntegrityError:
            if attempt == 2:
                raise
            continue
        if names:
            log.info("the collector measures its own reachability: %d name(s)", len(names))
        return
