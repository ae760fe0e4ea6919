"""The decoys this probe set aside: names its measurements showed blocked where it is.

Where this sits in the data flow: after a round's measurements (``daemon.round``),
the decoys ``measure.decoys.blocked_decoys`` finds are kept here with the time
they were seen blocked, in ``state.json``'s ``decoys_set_aside`` field (``identity``
owns the file); the next rounds draw their decoy from the pool without them for
``SET_ASIDE``. When every name of the pool is set aside the whole pool is used
again: a decoy that fails is reported by the measurement and never taken as
evidence of SNI filtering, so a bad draw costs a control, not a false verdict.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from probe_agent.measure.decoys import SET_ASIDE
from probe_agent.protocol.times import parse_rfc3339, rfc3339
from probe_agent.state.identity import read_state_fields, update_state_fields

SET_ASIDE_FIELD = "decoys_set_aside"
MAX_SET_ASIDE = 256


def set_aside(state_dir: Path, now: datetime | None = None) -> dict[str, datetime]:
    """The decoys set aside and when, the expired ones left out."""
    moment = now or datetime.now(UTC)
    raw = read_state_fields(state_dir.expanduser()) if state_dir.expanduser().is_dir() else {}
    kept = raw.get(SET_ASIDE_FIELD)
    found: dict[str, datetime] = {}
    for name, when in kept.items() if isinstance(kept, dict) else ():
        try:
            at = parse_rfc3339(when) if isinstance(when, str) else None
        except ValueError:
            at = None
        if isinstance(name, str) and at is not None and moment - at < timedelta(seconds=SET_ASIDE):
            found[name] = at
    return found


def record_blocked(state_dir: Path, names: Iterable[str], now: datetime | None = None) -> None:
    moment = now or datetime.now(UTC)
    new = set(names)
    if not new:
        return
    kept = set_aside(state_dir, moment) | {n: moment for n in new}
    latest = sorted(kept.items(), key=lambda item: item[1])[-MAX_SET_ASIDE:]
    update_state_fields(
        state_dir, {SET_ASIDE_FIELD: {n: rfc3339(at, "seconds") for n, at in latest}}
    )


def draw(pool: tuple[str, ...], state_dir: Path, now: datetime | None = None) -> str:
    """This round's decoy: a name of *pool* not set aside (all of them if none is left)."""
    aside = set_aside(state_dir, now)
    usable = [n for n in pool if n not in aside] or list(pool)
    return random.SystemRandom().choice(usable)
