"""The measurement document: what a probe signs and the collector stores, byte for byte.

Where this sits in the data flow: between the engine's result (a plain dict,
docs/measurement-format.md) and the envelope (``probe_agent.protocol.envelope``).
The volunteer's round and the collector's control prober both build it here,
so the two kinds of measurement cannot drift apart (docs/api.md
``POST /measurements``).
"""

from __future__ import annotations

from typing import Any

from probe_agent.protocol.inputs import DeclaredNetwork
from probe_agent.protocol.times import utc_now_rfc3339


def measurement_document(
    measurement: dict[str, Any],
    declared: DeclaredNetwork | None,
    via_proxy: bool,
    region: str | None = None,
) -> dict[str, Any]:
    """The signed payload of a measurement (docs/api.md ``POST /measurements``). The
    declared region (``run --region``) only when there is one: collectors before
    regions ignore the field, and documents without it read as before."""
    document: dict[str, Any] = {
        "measurement": measurement,
        "signed_at": utc_now_rfc3339(),
        "declared": declared.to_json() if declared else None,
        "via_proxy": via_proxy,
    }
    if region is not None:
        document["region"] = region
    return document
