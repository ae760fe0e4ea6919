"""Volunteers, not keys: who a probe's votes belong to, and which of them count.

A *volunteer* is the enrollment token: every probe enrolled through one token
(one person handing ten keys the same ``--uses 10`` token) votes once, together.
A probe enrolled without a token (open enrollment, or approved from the queue)
is its own volunteer. Volunteer ids are internal (``t:<token id>`` or
``p:<probe id>``) and never published.

Which votes count (docs/methodology.md, "Volunteers, not keys"):

- none of a revoked probe, nor of any probe of a revoked token: they stop
  counting at the next detection pass, which re-evaluates every open event;
- a network *located* from the probe's address at ingest counts;
- a *declared* network (``--cc/--asn``, or any measurement sent through a
  proxy) counts only when someone vouched for it: the probe's token was issued
  for that network (``probes token --cc --asn``), or an operator vouched for
  the probe (``probes vouch``). Otherwise operators see it (``probes list``)
  but it never opens, keeps or closes an event.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from collector.core.db import chunks
from collector.core.models import DetectorStateRow, ProbeRow, TokenRow, VerdictRow
from collector.services.geo import NetworkSource
from collector.services.regions import RegionSource


@dataclass(frozen=True, slots=True)
class Standing:
    """One probe, as the detector counts it."""

    volunteer: str
    vouched: tuple[str, int] | None  # the network someone vouched for
    active: bool  # neither the probe nor its token is revoked
    region: str | None = None  # the region someone vouched for (ISO 3166-2)

    def counts(self, cc: str, asn: int, network_source: str) -> bool:
        """True when a verdict of this probe from (*cc*, *asn*) is a vote."""
        if not self.active:
            return False
        if network_source == NetworkSource.DECLARED:
            return self.vouched == (cc, asn)
        return True

    def counted_region(self, region: str | None, region_source: str | None) -> str | None:
        """The region a verdict of this probe votes in: a located one, or a declared one
        someone vouched for; else none (it still votes in its network). Rows stored
        before regions (no source) take the vouched region, as they always did."""
        if region_source is None:
            return self.region if region is None else None
        if region_source == RegionSource.GEOLOCATED:
            return region
        return region if region is not None and region == self.region else None


def volunteer_id(probe_id: str, token_id: int | None) -> str:
    return f"t:{token_id}" if token_id is not None else f"p:{probe_id}"


def vouched_network(probe: ProbeRow, token: TokenRow | None) -> tuple[str, int] | None:
    """The token's network if it names one, else the one an operator vouched for."""
    if token is not None and token.vouched_cc and token.vouched_asn is not None:
        return token.vouched_cc, token.vouched_asn
    if probe.vouched_cc and probe.vouched_asn is not None:
        return probe.vouched_cc, probe.vouched_asn
    return None


def standings(session: Session) -> dict[str, Standing]:
    """Every probe's standing, in one query (probes number in the thousands, not millions)."""
    found: dict[str, Standing] = {}
    rows = session.execute(
        select(ProbeRow, TokenRow).outerjoin(TokenRow, TokenRow.id == ProbeRow.token_id)
    )
    for probe, token in rows:
        active = probe.status != "revoked" and (token is None or token.revoked_at is None)
        region = token.region if token is not None and token.region else probe.region
        found[probe.id] = Standing(
            volunteer_id(probe.id, probe.token_id), vouched_network(probe, token), active, region
        )
    return found


def reevaluate(session: Session, probe_ids: Iterable[str], since: datetime) -> int:
    """Have the next pass evaluate every (domain, country) these probes voted on since
    *since* (a vouch or a revocation changes which votes count, even where no event
    is open: hidden "ok" votes can stop hiding a block). Returns the keys marked."""
    ids = sorted(set(probe_ids))
    if not ids:
        return 0
    keys: set[tuple[str, str]] = {
        (domain, cc)
        for domain, cc in session.execute(
            select(VerdictRow.domain, VerdictRow.cc)
            .where(VerdictRow.probe_id.in_(ids), VerdictRow.started_at >= since)
            .distinct()
        )
    }
    evaluate_soon(session, keys)
    return len(keys)


def evaluate_soon(session: Session, keys: Iterable[tuple[str, str]]) -> None:
    """Have the next detection pass evaluate these (domain, country) keys (a vouch, a
    revocation, an import or a re-analysis changed their votes): one query a chunk
    of domains to find the keys the detector knows, one statement to mark them, one
    to add the others (a re-analysis may touch every key there is)."""
    wanted = set(keys)
    session.flush()
    d = DetectorStateRow
    known: set[tuple[str, str]] = set()
    for names in chunks(sorted({domain for domain, _ in wanted})):
        known.update(
            (domain, cc)
            for domain, cc in session.execute(select(d.domain, d.cc).where(d.domain.in_(names)))
            if (domain, cc) in wanted
        )
    if known:
        session.execute(update(d), [{"domain": domain, "cc": cc, "evaluated_at": None}
                                    for domain, cc in sorted(known)])  # fmt: skip
    if wanted - known:
        session.execute(insert(d), [{"domain": domain, "cc": cc, "evaluated_at": None,
                                     "active_probes": 0, "peak_probes": 0}
                                    for domain, cc in sorted(wanted - known)])  # fmt: skip
    for row in list(session.identity_map.values()):  # this session's rows: read again
        if isinstance(row, d) and (row.domain, row.cc) in known:
            session.expire(row, ["evaluated_at"])


def window_start(now: datetime, window_seconds: float) -> datetime:
    return now - timedelta(seconds=window_seconds)


@dataclass(frozen=True, slots=True)
class Reporting:
    """Volunteers (not keys) whose probes checked in since a time, by country and network."""

    countries: dict[str, set[str]]
    networks: dict[tuple[str, int], set[str]]

    def named(self, min_volunteers: int) -> dict[tuple[str, int], int]:
        """Networks with at least *min_volunteers* volunteers (the others are never named)."""
        k = max(1, min_volunteers)
        return {key: len(v) for key, v in self.networks.items() if len(v) >= k}


def reporting(session: Session, since: datetime) -> Reporting:
    query = select(ProbeRow.id, ProbeRow.token_id, ProbeRow.last_cc, ProbeRow.last_asn).where(
        ProbeRow.role == "probe",
        ProbeRow.status == "active",
        ProbeRow.last_checkin_at >= since,
        ProbeRow.last_cc.is_not(None),
    )
    countries: dict[str, set[str]] = {}
    networks: dict[tuple[str, int], set[str]] = {}
    for probe_id, token_id, cc, asn in session.execute(query):
        volunteer = volunteer_id(probe_id, token_id)
        countries.setdefault(str(cc), set()).add(volunteer)
        if asn is not None:
            networks.setdefault((str(cc), int(asn)), set()).add(volunteer)
    return Reporting(countries, networks)
