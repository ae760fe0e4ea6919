"""Analysis: the pure, versioned verdict on one measurement, given its control.

``analyze(measurement, controls, ctx)`` turns a probe's measurement (the shape of
``probe_agent.measure.observations.Measurement.to_dict()``) and the control vantage's
measurements of the same domain into a ``Verdict``: block flags (``dns``,
``tcp_ip``, ``tls``, ``http``) or one of ``ok``, ``down``, ``unknown``, with the
ids of the rules that fired and ``RULES_VERSION``. ``sni_triggers`` lists a
measurement's SNI triggers, which the caller hands back in ``Context.triggers``
when analyzing the same probe's later measurements (residual blocking). Each
function also takes ``read(measurement)``, the typed view, so that a caller that
analyzes one measurement several times (against controls before and after it)
reads it once.
Every rule is explained in docs/methodology.md.
"""

from collector.analysis.model import (
    BLOCK_FLAGS,
    RULES_VERSION,
    Context,
    Flag,
    Reason,
    Trigger,
    Verdict,
)
from collector.analysis.reading import Observed, Record, canonical_ip, read
from collector.analysis.verdict import analyze, dns_silent, sni_triggers

__all__ = [
    "BLOCK_FLAGS",
    "RULES_VERSION",
    "Context",
    "Flag",
    "Observed",
    "Reason",
    "Record",
    "Trigger",
    "Verdict",
    "analyze",
    "canonical_ip",
    "dns_silent",
    "read",
    "sni_triggers",
]
