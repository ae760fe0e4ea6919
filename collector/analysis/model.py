"""The verdict's vocabulary: flags, reason ids, the rule version, the analysis context.

A verdict (docs/methodology.md) is a set of combinable flags, not one
value: a measurement can show DNS poisoning and SNI filtering at once. Each
verdict carries the ids of the rules that fired (``Reason``) and the version of
the rules (``RULES_VERSION``) that produced it, so that the detector's events
and the evidence shown to an admin can always say which rules decided.
docs/methodology.md explains every rule id.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from probe_agent.protocol.addresses import IPNetwork

# Bump whenever any rule changes (a rule added, removed or changed in what it
# reads or concludes), even when no golden verdict changes: verdicts stored with
# an older version were decided by other rules. Format: year.month.serial.
RULES_VERSION = "2026.12.2"


class Flag(StrEnum):
    DNS = "dns"
    TCP_IP = "tcp_ip"
    TLS = "tls"
    HTTP = "http"
    OK = "ok"
    DOWN = "down"
    UNKNOWN = "unknown"


BLOCK_FLAGS: frozenset[Flag] = frozenset({Flag.DNS, Flag.TCP_IP, Flag.TLS, Flag.HTTP})
_SOLE_FLAGS = frozenset({Flag.OK, Flag.DOWN, Flag.UNKNOWN})


class Reason(StrEnum):
    """Rule ids, in rule order: a verdict lists its reasons in this order."""

    CONTROL_MISSING = "control.missing"
    VANTAGE_DNS_UNREACHABLE = "vantage.dns_unreachable"
    DNS_FORGED_IP = "dns.forged_ip"
    DNS_BOGON = "dns.bogon"
    DNS_INJECTION = "dns.injection"
    DNS_UNMATCHED_INVALID_TLS = "dns.unmatched_invalid_tls"
    DNS_RCODE = "dns.rcode"
    TCP_IP_UNREACHABLE = "tcp_ip.unreachable"
    TLS_SNI_FILTER = "tls.sni_filter"
    TLS_INTERCEPTION = "tls.interception"
    TLS_HANDSHAKE_CUT = "tls.handshake_cut"
    HTTP_ALTERED = "http.altered"
    OK_REACHED = "ok.reached"
    OK_REACHED_CONTROL_FAILED = "ok.reached_control_failed"
    CONTROL_FAILED_WITH_EVIDENCE = "control.failed_with_evidence"
    DOWN_CONTROL_FAILED_TOO = "down.control_failed_too"
    RESIDUE_ONLY = "residue.only"
    UNKNOWN_UNEXPLAINED = "unknown.unexplained"
    # Traps: patterns that look like blocking and are not; noted, never a flag.
    TRAP_CDN_VALID_TLS = "trap.cdn_valid_tls"
    TRAP_BOGON_IN_CONTROL = "trap.bogon_in_control"
    TRAP_AAAA_NO_ANSWER = "trap.aaaa_no_answer"


REASON_FLAGS: Mapping[Reason, Flag] = {
    Reason.DNS_FORGED_IP: Flag.DNS,
    Reason.DNS_BOGON: Flag.DNS,
    Reason.DNS_INJECTION: Flag.DNS,
    Reason.DNS_UNMATCHED_INVALID_TLS: Flag.DNS,
    Reason.DNS_RCODE: Flag.DNS,
    Reason.TCP_IP_UNREACHABLE: Flag.TCP_IP,
    Reason.TLS_SNI_FILTER: Flag.TLS,
    Reason.TLS_INTERCEPTION: Flag.TLS,
    Reason.TLS_HANDSHAKE_CUT: Flag.TLS,
    Reason.HTTP_ALTERED: Flag.HTTP,
}


def _no_asn(ip: str) -> int | None:
    return None


@dataclass(frozen=True, slots=True)
class Trigger:
    """An SNI trigger: the instance-SNI handshake to (ip, port) was reset, timed out
    or cut after the decoy handshake to the same address worked.

    ``at`` is aware UTC: the measurement's ``started_at`` plus the failed
    handshake's ``t`` (when the censor reacted).
    """

    ip: str
    port: int
    at: datetime


@dataclass(frozen=True, slots=True)
class Context:
    """What the analysis knows besides the measurement and its controls.

    ``asn_of`` maps an address to its ASN (None or 0 when unknown); it is only
    ever called with valid, canonical IP address strings. ``triggers`` are the
    SNI triggers of the same probe seen in its other measurements.
    """

    asn_of: Callable[[str], int | None] = _no_asn
    lab_networks: tuple[IPNetwork, ...] = ()
    residual_seconds: float = 180.0
    triggers: tuple[Trigger, ...] = ()
    # Set by the caller when most of the same probe's measurements of the same round
    # got no DNS answer at all: the probe's resolver or network failed, not the name.
    vantage_dns_failing: bool = False


@dataclass(frozen=True, slots=True)
class Verdict:
    """Either a non-empty subset of ``BLOCK_FLAGS``, or exactly one of ok, down, unknown."""

    flags: frozenset[Flag]
    reasons: tuple[str, ...]
    rule_version: str = RULES_VERSION

    def __post_init__(self) -> None:
        blocks = self.flags <= BLOCK_FLAGS and bool(self.flags)
        sole = len(self.flags) == 1 and self.flags <= _SOLE_FLAGS
        if not (blocks or sole):
            raise ValueError(f"not a verdict: flags {sorted(self.flags)}")

    @property
    def blocked(self) -> bool:
        return bool(self.flags & BLOCK_FLAGS)

    def to_json(self) -> dict[str, Any]:
        return {
            "flags": sorted(str(flag) for flag in self.flags),
            "reasons": [str(reason) for reason in self.reasons],
            "rule_version": self.rule_version,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Verdict:
        """The inverse of ``to_json``; ValueError on anything else."""
        try:
            flags = frozenset(Flag(value) for value in data["flags"])
            reasons = tuple(data["reasons"])
            version = data["rule_version"]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a verdict: {exc}") from exc
        if not all(isinstance(reason, str) for reason in reasons) or not isinstance(version, str):
            raise ValueError("not a verdict: reasons and rule_version must be strings")
        return cls(flags=flags, reasons=reasons, rule_version=version)
