"""What a public answer may show: the publication policy, in one place.

Every door that publishes the collector's state passes its documents through a
``Publication``: the status and event routes (collector/services/events.py),
the alert documents (collector/alerts/outbox.py), and pages and feeds. The
admin's is ``FULL``: everything, to the microsecond. The public one
(``Publication.public``, docs/methodology.md "Publication"):

- names a network (its ASN) only when at least K volunteers
  (``serve --publish-min-volunteers``, 3) report from it, as the last detection
  pass counted them (``network_states.probes``). The others are folded into
  one row per country (``"asn": null``) in a status, and left out of an
  event's ``asns`` (their number is ``withheld_networks``). With K = 1 every
  network is named.
- rounds every time down to the measurement interval (``--measure-interval``):
  every probe measures every target once an interval, so a rounded time points
  at none of the connections a network's flow logs hold for that interval.

It works on the documents as the API shows them (``event_json`` and
``network_json``, the webhook document), so that one definition serves the
routes and the outbox. It lives in core because the outbox (alerts) sits below
the services and must apply it too.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from collector.core.db import chunks
from collector.core.models import NetworkStateRow
from collector.core.settings import CollectorSettings

# The times of an event and of a network's state, as their documents name them.
EVENT_TIMES = (
    "started_at",
    "detected_at",
    "updated_at",
    "ended_at",
    "closed_at",
    "volume_collapse_at",
)
NETWORK_TIMES = ("since", "updated_at")
# A country row's state is the worst of the networks folded into it: blocked if any
# is blocked (a block is what the page exists to show), else down if any is down,
# else ok if any is ok; unknown when none reported.
WORST_FIRST = ("blocked", "down", "ok", "unknown")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)

Key = tuple[str, str]  # (domain, country)
_K = TypeVar("_K")


def worst_states(pairs: Iterable[tuple[_K, str]]) -> dict[_K, str]:
    """key -> the worst of its states (WORST_FIRST). The worst over every network of a
    country is also the worst of its public rows (small networks fold into a country
    row with the worst of theirs), so a country's state names no network."""
    worst: dict[_K, str] = {}
    for key, state in pairs:
        current = worst.get(key)
        if current is None or WORST_FIRST.index(state) < WORST_FIRST.index(current):
            worst[key] = state
    return worst


Volunteers = Mapping[int, int]  # ASN -> volunteers reporting from it


def iso(value: datetime) -> str:
    """The API's time format (collector/services/events.py writes the same)."""
    return value.isoformat().replace("+00:00", "Z")


def floor_time(value: datetime, step_seconds: float) -> datetime:
    """*value* rounded down to a multiple of *step_seconds* since the epoch, exactly."""
    step = max(1, round(step_seconds * 1_000_000))
    since_epoch = (value - EPOCH) // MICROSECOND
    return EPOCH + (since_epoch - since_epoch % step) * MICROSECOND


@dataclass(frozen=True, slots=True)
class Publication:
    """How much of the collector's state an answer shows (``FULL``: all of it)."""

    min_volunteers: int = 1  # K: a network is named from this many volunteers on
    interval: float | None = None  # seconds every time is rounded down to; None: exact

    @classmethod
    def public(cls, settings: CollectorSettings) -> Publication:
        return cls(settings.publish_min_volunteers, settings.measure_interval)

    @property
    def full(self) -> bool:
        return self.min_volunteers <= 1 and self.interval is None

    def names(self, volunteers: int) -> bool:
        """True when a network with this many volunteers may be named."""
        return self.min_volunteers <= 1 or volunteers >= self.min_volunteers

    def time(self, value: str | None) -> str | None:
        """A document's time (RFC 3339), rounded down to the interval."""
        if value is None or self.interval is None:
            return value
        return iso(floor_time(_parse(value), self.interval))

    def networks(self, networks: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """A domain's per-network states (``network_json``): the small ones folded by country."""
        shown, small = [], defaultdict(list)
        for network in networks:
            if self.names(network["probes"]):
                shown.append(self._times(network, NETWORK_TIMES))
            else:
                small[network["cc"]].append(network)
        shown += [self._times(_fold(cc, rows), NETWORK_TIMES) for cc, rows in small.items()]
        return sorted(shown, key=lambda n: (n["cc"], n["asn"] is None, n["asn"] or 0))

    def event(self, event: dict[str, Any], volunteers: Volunteers) -> dict[str, Any]:
        """One event document (``event_json``): its times rounded, its small networks withheld.

        *volunteers* are the event's networks' (its domain and country).
        """
        out = self._times(event, EVENT_TIMES)
        asns = list(event.get("asns", []))
        out["asns"] = [asn for asn in asns if self.names(volunteers.get(asn, 0))]
        out["withheld_networks"] = len(asns) - len(out["asns"])
        return out

    def events(self, session: Session, events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Event documents, each against its own networks' volunteers (one query)."""
        counts: dict[Key, dict[int, int]] = {}
        if self.min_volunteers > 1:  # else every network is named: nothing to count
            counts = network_volunteers(session, {(e["domain"], e["cc"]) for e in events})
        return [self.event(e, counts.get((e["domain"], e["cc"]), {})) for e in events]

    def _times(self, document: dict[str, Any], names: Iterable[str]) -> dict[str, Any]:
        out = dict(document)
        for name in names:
            if name in out:
                out[name] = self.time(out[name])
        return out


FULL = Publication()


def network_volunteers(session: Session, keys: Iterable[Key]) -> dict[Key, dict[int, int]]:
    """Volunteers reporting from each network of each (domain, country), per the last pass."""
    wanted = set(keys)
    found: dict[Key, dict[int, int]] = defaultdict(dict)
    columns = (NetworkStateRow.domain, NetworkStateRow.cc, NetworkStateRow.asn)
    for domains in chunks(sorted({domain for domain, _ in wanted})):
        query = select(*columns, NetworkStateRow.probes).where(NetworkStateRow.domain.in_(domains))
        for domain, cc, asn, probes in session.execute(query):
            if (domain, cc) in wanted:
                found[(domain, cc)][asn] = probes
    return dict(found)


def _parse(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _fold(cc: str, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One country row for *rows*, networks of *cc* too small to be named.

    Its ``probes`` is their sum: it tells how many volunteers the country has
    outside the named networks, never in which network (docs/methodology.md).
    """
    state = min((r["state"] for r in rows), key=WORST_FIRST.index)
    in_state = [r for r in rows if r["state"] == state]
    return {
        "cc": cc,
        "asn": None,
        "state": state,
        "methods": sorted({m for r in in_state for m in r["methods"]}),
        # Since when at least one of them has been in that state; the latest update.
        "since": iso(min(_parse(r["since"]) for r in in_state)),
        "probes": sum(r["probes"] for r in rows),
        "ooni": any(r.get("ooni", False) for r in rows),
        "updated_at": iso(max(_parse(r["updated_at"]) for r in rows)),
    }
