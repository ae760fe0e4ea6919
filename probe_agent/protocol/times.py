"""The one time format of the wire: RFC 3339 in UTC with a ``Z`` suffix.

Where this sits in the data flow: every time a probe writes into a signed
document (``started_at``, ``signed_at``, a check-in's ``at``) and every time it
keeps in ``state.json`` is formatted here, so that the collector's parser sees
one spelling. The monotonic ``t0``/``t`` of the steps are in
``probe_agent.measure.clock``.
"""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339(when: datetime, timespec: str = "milliseconds") -> str:
    """*when* (an aware datetime) as RFC 3339 UTC with a ``Z`` suffix."""
    if when.tzinfo is None:
        raise ValueError("a time without a time zone")
    return when.astimezone(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def utc_now_rfc3339() -> str:
    """Wall-clock time now, to the millisecond."""
    return rfc3339(datetime.now(UTC))


def parse_rfc3339(text: str) -> datetime:
    """An RFC 3339 time with its offset (``Z`` or ``+hh:mm``) as an aware UTC datetime."""
    when = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if when.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    return when.astimezone(UTC)
