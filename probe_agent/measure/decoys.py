"""The decoy names of the SNI control, and which of them a measurement shows blocked.

Where this sits in the data flow: before each address's real handshake the engine
makes one with a decoy name (``engine``); the analysis calls SNI filtering only
where that decoy worked on the same address and port (collector.analysis,
rule ``tls.sni_blocked``). With one fixed decoy (``example.com``) every
Blockwatch probe sent the same unusual name to the same addresses just before
each real one: easy to pick out, for a censor who wants to single out the probes
or feed them false results. So the daemon draws its decoy from a pool each
round; the operator may hand out another pool (check-in ``decoys``) and the
volunteer may set their own (``run --decoy-sni``, repeatable).

The default pool: sites of large companies that run operations in mainland
China and are reachable there, so that an SNI filter there has no reason to cut
them; none of them is the operator's or the project's. It is a starting point,
not a guarantee: a decoy that a measurement shows blocked (its handshake failed
where the instance's own worked on the same address) is set aside by that probe
for ``SET_ASIDE`` (``state.decoys``), and SNI filtering is never inferred from a
failed decoy.
"""

from __future__ import annotations

from collections.abc import Iterable

from probe_agent.measure.observations import Measurement
from probe_agent.protocol.errors import InvalidDomainError
from probe_agent.protocol.inputs import normalize_domain

DEFAULT_POOL = (
    "www.apple.com",
    "www.microsoft.com",
    "www.bing.com",
    "www.amazon.com",
    "www.samsung.com",
    "www.intel.com",
    "www.nvidia.com",
    "www.adobe.com",
    "www.oracle.com",
    "www.ibm.com",
    "www.cisco.com",
    "www.dell.com",
    "www.hp.com",
    "www.lenovo.com",
    "www.sony.com",
    "www.tesla.com",
    "www.visa.com",
    "www.mastercard.com",
    "www.qualcomm.com",
    "www.bmw.com",
)
SET_ASIDE = 7 * 24 * 3600.0  # seconds a decoy seen blocked stays out of a probe's pool
MAX_POOL = 256


def parse_pool(names: Iterable[str]) -> tuple[str, ...]:
    """Valid, unique names in order (at most MAX_POOL); an invalid one is skipped."""
    pool: dict[str, None] = {}
    for name in names:
        try:
            pool[normalize_domain(name)] = None
        except InvalidDomainError:
            continue
        if len(pool) == MAX_POOL:
            break
    return tuple(pool)


def blocked_decoys(measurement: Measurement) -> set[str]:
    """The decoys this measurement shows blocked: the decoy handshake failed on an
    address and port where the instance's own handshake worked (both failing says
    nothing about the decoy: the address may be blocked)."""
    real_ok = {(t.ip, t.port) for t in measurement.tls if not t.decoy and t.failure is None}
    return {
        t.sni
        for t in measurement.tls
        if t.decoy and t.failure is not None and (t.ip, t.port) in real_ok and t.sni
    }
