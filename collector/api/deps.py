"""Dependencies: settings, sessions, the admin and metrics checks, what the caller
may see (its ``Publication``), the caller's network.

The caller's address is read here, turned into a country and ASN at once, and
never leaves this module: ``network_of`` closes over it for one request. The one
exception is ``seen_address``: the check-in answer echoes it to the probe it
came from (behind NAT the probe cannot learn its public address otherwise, and
must scrub it from block pages and redirects); it is never stored or logged.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from pydantic import SecretStr
from sqlalchemy.orm import Session

from collector.core.clock import Clock
from collector.core.db import session_scope
from collector.core.errors import Unauthorized
from collector.core.keys import CollectorKey
from collector.core.publication import FULL, Publication
from collector.core.settings import CollectorSettings
from collector.services.geo import Network, resolve_network
from collector.services.ingest import NetworkOf
from collector.services.regions import with_region


def get_settings(request: Request) -> CollectorSettings:
    settings: CollectorSettings = request.app.state.settings
    return settings


def get_clock(request: Request) -> Clock:
    clock: Clock = request.app.state.clock
    return clock


def get_collector_key(request: Request) -> CollectorKey:
    key: CollectorKey = request.app.state.collector_key
    return key


def get_signed_endpoints(request: Request) -> dict[str, str] | None:
    """The signed endpoint list (collector/services/reachability.py), made at startup."""
    endpoints: dict[str, str] | None = request.app.state.signed_endpoints
    return endpoints


def get_session(request: Request) -> Iterator[Session]:
    with session_scope(request.app.state.sessions) as session:
        yield session


def _presents(request: Request, secret: SecretStr) -> bool:
    """True when the request's ``Authorization: Bearer`` token is *secret*."""
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    expected = secret.get_secret_value()
    # Constant-time comparison; an empty configured token never matches.
    return (
        scheme.lower() == "bearer"
        and bool(expected)
        and hmac.compare_digest(presented.strip().encode(), expected.encode())
    )


def is_admin(request: Request, settings: CollectorSettings) -> bool:
    return _presents(request, settings.admin_token)


def require_admin(
    request: Request, settings: Annotated[CollectorSettings, Depends(get_settings)]
) -> None:
    if not is_admin(request, settings):
        raise Unauthorized("this needs `Authorization: Bearer <admin token>`")


def require_metrics_reader(
    request: Request, settings: Annotated[CollectorSettings, Depends(get_settings)]
) -> None:
    """``GET /metrics`` on the main listener: the metrics token or the admin token."""
    if not (_presents(request, settings.metrics_token) or is_admin(request, settings)):
        raise Unauthorized(
            "this needs `Authorization: Bearer <metrics token>` (BLOCKWATCH_METRICS_TOKEN) "
            "or the admin token"
        )


def get_publication(
    request: Request, settings: Annotated[CollectorSettings, Depends(get_settings)]
) -> Publication:
    """What the caller may see: all of it with the admin token, else the public view
    (k-anonymous, rounded; collector/core/publication.py). Any other token, a
    subscriber's included, reads the public view."""
    return FULL if is_admin(request, settings) else Publication.public(settings)


def _client_address(request: Request, settings: CollectorSettings) -> str | None:
    peer = request.client.host if request.client else None
    if peer is None or not settings.trusted_proxies:
        return peer
    try:
        peer_ip = ipaddress.ip_address(peer)
        trusted = [ipaddress.ip_network(c.strip()) for c in settings.trusted_proxies.split(",")]
    except ValueError:
        return peer
    if any(peer_ip in net for net in trusted):
        forwarded = request.headers.get("x-forwarded-for", "")
        hops = [h.strip() for h in forwarded.split(",") if h.strip()]
        if hops:
            return hops[-1]
    return peer


def get_seen_address(
    request: Request, settings: Annotated[CollectorSettings, Depends(get_settings)]
) -> str | None:
    """The address this request came from, for the check-in answer only."""
    return _client_address(request, settings)


def get_network_of(
    request: Request, settings: Annotated[CollectorSettings, Depends(get_settings)]
) -> NetworkOf:
    address = _client_address(request, settings)
    geolocator = request.app.state.geolocator
    # One request, one address: a batch of 100 items asks the same question 100 times.
    city = request.app.state.city_regions
    answers: dict[tuple[tuple[str, int] | None, bool, str | None], Network] = {}

    def network_of(
        declared: tuple[str, int] | None, via_proxy: bool, region: str | None = None
    ) -> Network:
        key = (declared, via_proxy, region)
        if key not in answers:
            network = resolve_network(geolocator, address, declared, via_proxy)
            answers[key] = with_region(network, city, address, via_proxy, region)
        return answers[key]

    return network_of


Admin = Annotated[None, Depends(require_admin)]
# scope="function": commit before the answer is sent (acknowledged means stored).
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
SettingsDep = Annotated[CollectorSettings, Depends(get_settings)]
ClockDep = Annotated[Clock, Depends(get_clock)]
NetworkOfDep = Annotated[NetworkOf, Depends(get_network_of)]
SeenAddressDep = Annotated[str | None, Depends(get_seen_address)]
PublicationDep = Annotated[Publication, Depends(get_publication)]
CollectorKeyDep = Annotated[CollectorKey, Depends(get_collector_key)]
SignedEndpointsDep = Annotated[dict[str, str] | None, Depends(get_signed_endpoints)]
