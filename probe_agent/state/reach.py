"""What the probe keeps about reaching its collector: the collector key it trusts,
the signed endpoint list, and how each way has fared.

Where this sits in the data flow: the round (``daemon.round``) anchors the
collector key before enrolling (the fingerprint an enrollment token carries),
pins the key the enrollment answer names (checked against that anchor; without
one, the first key met is kept: trust on first use), keeps the endpoint list of
each check-in once it verifies against the pinned key, and after every session
records each attempt. The client (``daemon.client``) gets the verified endpoints
and the way that worked last, which it tries first. ``status --json`` shows the
statistics as ``tactics``.

The fields live in ``state.json`` (``identity`` owns the file; this module its
``collector_*`` and ``tactics`` fields). The endpoint list is kept as the collector
signed it and verified again whenever it is read, so a list changed on disk is
dropped, not trusted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from probe_agent.protocol.endpoints import Endpoint, EndpointList, EndpointsError, verify
from probe_agent.protocol.envelope import b64_field, fingerprint
from probe_agent.protocol.errors import InvalidOptionError
from probe_agent.protocol.evidence import canonical_key_id
from probe_agent.protocol.messages import N_, Message
from probe_agent.protocol.times import rfc3339
from probe_agent.state.identity import read_state_fields, update_state_fields

log = logging.getLogger("blockwatch.probe.reach")

ANCHOR, KEY_ID, ENDPOINTS = "collector_anchor", "collector_key_id", "collector_endpoints"
TACTICS, LAST_TACTIC = "tactics", "last_tactic"
DOH_PREFIX = "doh:"  # a DoH way's key (daemon.tactics): the prefix, then its endpoint's text
ANCHOR_HEX = 32  # the fingerprint prefix an enrollment token carries: 128 bits
MAX_TACTICS = 64


class CollectorKeyMismatch(Exception):
    """The collector answered with another key than the one this probe trusts."""


@dataclass(slots=True)
class TacticStats:
    ok: int = 0
    failed: int = 0
    last_ok: str | None = None
    last_failed: str | None = None
    last_failure: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "failed": self.failed,
            "last_ok": self.last_ok,
            "last_failed": self.last_failed,
            "last_failure": self.last_failure,
        }

    @classmethod
    def from_json(cls, data: Any) -> TacticStats:
        if not isinstance(data, dict):
            return cls()

        def count(name: str) -> int:
            value = data.get(name)
            return value if type(value) is int and value >= 0 else 0

        def text(name: str) -> str | None:
            value = data.get(name)
            return value if isinstance(value, str) else None

        return cls(
            count("ok"), count("failed"), text("last_ok"), text("last_failed"), text("last_failure")
        )


@dataclass(slots=True)
class Reach:
    anchor: str | None = None  # a key id prefix (hex), until a key is pinned
    key_id: str | None = None  # the collector key this probe trusts
    endpoints: EndpointList | None = None  # verified against key_id
    tactics: dict[str, TacticStats] = field(default_factory=dict)
    last_tactic: str | None = None


def split_token(text: str) -> tuple[str, str | None]:
    """An enrollment token as the collector prints it, ``bwt_<secret>.<key prefix>``:
    (the token to send, the collector key's fingerprint prefix or None)."""
    token, dot, anchor = text.strip().partition(".")
    if not dot:
        return token, None
    anchor = anchor.lower()
    if len(anchor) != ANCHOR_HEX or any(c not in "0123456789abcdef" for c in anchor):
        raise ValueError(
            Message(N_("the enrollment token's part after the dot is not a key fingerprint"))
        )
    return token, anchor


def load_reach(state_dir: Path) -> Reach:
    raw = read_state_fields(state_dir.expanduser()) if state_dir.expanduser().is_dir() else {}
    anchor = raw.get(ANCHOR) if isinstance(raw.get(ANCHOR), str) else None
    key_id = canonical_key_id(raw[KEY_ID]) if isinstance(raw.get(KEY_ID), str) else None
    endpoints = None
    if key_id is not None and raw.get(ENDPOINTS) is not None:
        try:
            endpoints, _ = verify(raw[ENDPOINTS], key_id)
        except EndpointsError as exc:
            log.warning("dropping the kept endpoint list: %s", exc)
    tactics_raw = raw.get(TACTICS)
    tactics = (
        {k: TacticStats.from_json(v) for k, v in tactics_raw.items() if isinstance(k, str)}
        if isinstance(tactics_raw, dict)
        else {}
    )
    last = raw.get(LAST_TACTIC) if isinstance(raw.get(LAST_TACTIC), str) else None
    return Reach(anchor, key_id, endpoints, tactics, last)


def anchor(state_dir: Path, prefix: str) -> None:
    """Trust only a collector key whose fingerprint starts with *prefix* (from a token)."""
    current = load_reach(state_dir)
    if current.key_id is not None and not current.key_id.startswith(prefix):
        raise CollectorKeyMismatch(
            "the enrollment token names another collector key than the one this probe trusts"
        )
    update_state_fields(state_dir, {ANCHOR: prefix})


def pin(state_dir: Path, key_id: str | None) -> str | None:
    """Pin the key an enrollment answer names; the key pinned (None: none known).

    Raises ``CollectorKeyMismatch`` when it is not the anchored or pinned one."""
    current = load_reach(state_dir)
    named = canonical_key_id(key_id) if key_id else None
    if named is None:
        return current.key_id  # a collector older than the field: nothing to pin
    if current.key_id is not None and named != current.key_id:
        raise CollectorKeyMismatch("the collector answered with another key than it had")
    if current.anchor is not None and not named.startswith(current.anchor):
        raise CollectorKeyMismatch("the collector's key is not the one the token names")
    if current.key_id is None:
        update_state_fields(state_dir, {KEY_ID: named})
    return named


def keep_endpoints(state_dir: Path, answer: Any) -> EndpointList | None:
    """Keep a check-in's endpoint list when it verifies and is not older than the one
    kept; the list now kept. Raises ``EndpointsError`` for a list that does not verify."""
    current = load_reach(state_dir)
    if answer is None:
        return current.endpoints
    key_id = current.key_id
    if key_id is None:
        # Enrolled before collectors named their key: the first list's key is pinned
        # (trust on first use), unless a token anchored another one.
        key_id = _signer(answer)
        if current.anchor is not None and not key_id.startswith(current.anchor):
            raise EndpointsError("signed by another key than the one the token names")
    listed, _ = verify(answer, key_id)
    if current.key_id is None:
        update_state_fields(state_dir, {KEY_ID: key_id})
    if current.endpoints is not None and listed.issued() < current.endpoints.issued():
        return current.endpoints  # a replica started before the one that signed the kept list
    update_state_fields(state_dir, {ENDPOINTS: answer})
    return listed


def _signer(answer: Any) -> str:
    if not isinstance(answer, dict):
        raise EndpointsError("the list is not a JSON object")
    return fingerprint(b64_field(answer, "collector_public_key", EndpointsError))


def tactic_kind(key: str) -> str | None:
    """The kind of the way a tactics key names (``doh`` or ``Endpoint.kind``), or None
    for a key that names no way (written by another version, or damaged)."""
    try:
        endpoint = Endpoint.parse(key.removeprefix(DOH_PREFIX))
    except InvalidOptionError:
        return None
    return "doh" if key.startswith(DOH_PREFIX) else endpoint.kind


def record_attempts(
    state_dir: Path,
    attempts: list[tuple[str, bool, str | None]],
    answered: str | None,
    now: datetime | None = None,
) -> None:
    """Count each attempt (way key, answered, failure kind); *answered*: the way that
    answered last, tried first next time."""
    if not attempts:
        return
    at = rfc3339(now or datetime.now(UTC), "seconds")
    current = load_reach(state_dir)
    tactics = current.tactics
    for key, ok, failure in attempts:
        stats = tactics.setdefault(key, TacticStats())
        if ok:
            stats.ok, stats.last_ok = stats.ok + 1, at
        else:
            stats.failed, stats.last_failed, stats.last_failure = stats.failed + 1, at, failure
    kept = dict(list(tactics.items())[-MAX_TACTICS:])
    changes: dict[str, Any] = {TACTICS: {k: v.to_json() for k, v in kept.items()}}
    if answered is not None:
        changes[LAST_TACTIC] = answered
    update_state_fields(state_dir, changes)
