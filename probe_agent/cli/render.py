"""Output of ``blockwatch-probe measure``: JSON lines, or a table for people.

The JSON line is ``Measurement.to_dict()`` verbatim (docs/measurement-format.md);
the table condenses each step to what a person scans for: which step failed, how.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable

from rich.table import Table
from rich.text import Text

from probe_agent.measure.observations import (
    DNSObservation,
    HTTPObservation,
    Measurement,
    TCPObservation,
    TLSObservation,
)
from probe_agent.protocol.messages import N_, Translate, untranslated
from probe_agent.protocol.vocabulary import Failure

# The table's columns (failure strings, hints and addresses in the cells stay as they are).
COLUMNS = (
    N_("domain"),
    "DNS",
    "TCP",
    N_("TLS decoy SNI"),
    N_("TLS real SNI"),
    N_("HTTP API"),
    N_("hints"),
)


def to_json_line(m: Measurement) -> str:
    return json.dumps(m.to_dict(), separators=(",", ":"), ensure_ascii=False)


def _count_outcomes(failures: Iterable[str | None]) -> str:
    counts = Counter(f or "ok" for f in failures)
    if not counts:
        return "-"
    return ", ".join(f"{name}" if n == 1 else f"{name} x{n}" for name, n in counts.most_common())


def _dns_cell(dns: list[DNSObservation]) -> str:
    answers: list[str] = []
    for obs in dns:
        if obs.injection_sink:
            continue
        for ip in obs.answers:
            if ip not in answers:
                answers.append(ip)
    # An AAAA query with no answer is the normal case for IPv4-only instances.
    failures = [
        o.failure
        for o in dns
        if o.failure
        and not o.injection_sink
        and not (o.query_type == "AAAA" and o.failure == Failure.DNS_NO_ANSWER.value)
    ]
    parts = []
    if answers:
        parts.append(" ".join(answers[:3]) + (" ..." if len(answers) > 3 else ""))
    if failures:
        parts.append(_count_outcomes(failures))
    return "\n".join(parts) or "-"


def _tcp_cell(tcp: list[TCPObservation]) -> str:
    return _count_outcomes(o.failure for o in tcp)


def _tls_cell(tls: list[TLSObservation], decoy: bool) -> str:
    return _count_outcomes(o.failure for o in tls if o.decoy is decoy)


def _http_cell(http: list[HTTPObservation], gettext: Translate) -> str:
    if not http:
        return "-"
    last = http[-1]
    if last.failure:
        return last.failure
    label = "mastodon" if last.mastodon else gettext(N_("not an instance"))
    return f"{last.status_code} {label}"


def _style(m: Measurement) -> str:
    if m.hints:
        return "bold red"
    if any(o.failure for o in [*m.tcp, *m.tls, *m.http]) or not m.http:
        return "yellow"
    return "green"


def build_table(measurements: list[Measurement], gettext: Translate = untranslated) -> Table:
    """The table of ``measure --format table``, its headings in *gettext*'s language."""
    table = Table(title="blockwatch-probe measure", show_lines=True)
    for column in COLUMNS:
        table.add_column(gettext(column), overflow="fold")
    for m in measurements:
        table.add_row(
            Text(m.domain, style=_style(m)),
            _dns_cell(m.dns),
            _tcp_cell(m.tcp),
            _tls_cell(m.tls, decoy=True),
            _tls_cell(m.tls, decoy=False),
            _http_cell(m.http, gettext),
            Text("\n".join(m.hints) or "-", style="bold red" if m.hints else ""),
        )
    return table
