"""Key rotation (``rotate-key``): a new key, agreed by the old one, installed only once accepted.

Where this sits in the data flow: beside the round, between ``identity`` (which
owns the key files) and the collector. The collector learns the new key from a
request signed by the old one and countersigned by the new one
(``client.rotate``, docs/api.md ``POST /probes/rotate``); from then on the old
key is retired (what it signed before stays valid, so the spool needs no
re-signing). This module holds that conversation; the files are ``identity``'s:

1. ``identity.stage_new_key``: ``key.pem.new``, written BEFORE asking the
   collector. An answer lost on the way back (a timeout after the collector
   committed) must not leave the probe with a retired key and no copy of the new one.
2. ``identity.keep_old_key``: ``key.pem.old``, a copy of the current key, kept
   until the rotation succeeded.
3. Once the collector accepted, ``identity.install_new_key``: ``key.pem.new``
   replaces ``key.pem`` (rename), ``state.json`` gets the new key id,
   ``key.pem.old`` is removed.

A clear refusal (the collector answered an error) discards ``key.pem.new`` and
``key.pem.old`` (``identity.discard_rotation``); ``key.pem`` was never touched.
No answer at all keeps both: running ``rotate-key`` again resumes with the same
new key, and if the collector then says the old key is retired (or the new one
is already known), a check-in signed by the new key tells whether the earlier
attempt went through.

Stop the daemon first: a daemon still holding the old key is refused after the
rotation until it is restarted.

Every request goes through ``client.connect`` with the volunteer's
``--proxy``: a rotation says "these two keys are one probe", and it must not
reach the collector from the volunteer's own address when the rounds do not.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from probe_agent.daemon.client import DEFAULT_TIMEOUT, CollectorAccess, connect
from probe_agent.protocol.errors import CollectorRefused, IdentityError
from probe_agent.protocol.messages import N_
from probe_agent.state.files import ensure_state_dir
from probe_agent.state.identity import (
    discard_rotation,
    install_new_key,
    keep_old_key,
    key_id,
    read_key,
    stage_new_key,
)
from probe_agent.state.reach import load_reach

# Answers to a resumed rotation that mean "maybe done already": the old key is
# retired, or the new key is known.
_MAYBE_DONE = {"err_revoked_key", "err_conflict"}

log = logging.getLogger("blockwatch.probe.keyrotation")


@dataclass(frozen=True, slots=True)
class Rotated:
    old_key_id: str
    new_key_id: str
    probe_id: str
    status: str
    resumed: bool  # a key.pem.new from an interrupted rotation was used


async def _known_to_collector(access: CollectorAccess, key: Ed25519PrivateKey) -> bool:
    """Whether a collector knows *key*: a check-in signed by it is not refused as unknown.

    This check-in declares no network and no ``public_evidence``: the collector
    keeps the flag off until the next round's check-in sets it again (the safe
    direction: nothing more is published meanwhile).
    """
    async with connect(access, key) as client:
        try:
            await client.checkin(None, via_proxy=access.via_proxy)
        except CollectorRefused as exc:
            if exc.code == "err_probe_pending":
                return True
            if exc.code in ("err_unknown_key", "err_revoked_key"):
                return False
            raise
    return True


async def _ask_collector(
    access: CollectorAccess, old: Ed25519PrivateKey, new: Ed25519PrivateKey, resumed: bool
) -> dict[str, str]:
    """The collector's answer to the rotation: the enrollment's fields it names.

    Empty when a resumed rotation turns out done by the interrupted attempt;
    ``CollectorRefused`` when the collector refused it.
    """
    async with connect(access, old) as client:
        try:
            answer = await client.rotate(new)
        except CollectorRefused as exc:
            if resumed and exc.code in _MAYBE_DONE and await _known_to_collector(access, new):
                return {}
            raise
    return {name: answer[name] for name in ("probe_id", "status") if isinstance(answer[name], str)}


async def rotate_key(
    state_dir: Path,
    collectors: tuple[str, ...],
    *,
    ca_file: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    proxy: str | None = None,
) -> Rotated:
    """Rotate the probe's key with the first collector that answers (through *proxy*).

    Raises ``IdentityError`` (no key, unsafe files), ``CollectorRefused`` (refused:
    nothing changed) or ``CollectorUnreachable`` (no answer: ``key.pem.new`` kept
    for the next attempt).
    """
    directory = ensure_state_dir(state_dir)
    old = read_key(directory)
    if old is None:
        raise IdentityError(
            N_("no key to rotate in %(directory)s: run the probe first"), directory=directory
        )
    new, resumed = stage_new_key(directory)
    if resumed:
        log.warning("resuming an interrupted key rotation with its new key")
    keep_old_key(directory, old)
    kept = load_reach(directory)  # the same ways as the rounds: the signed endpoints too
    access = CollectorAccess(
        collectors,
        timeout=timeout,
        ca_file=ca_file,
        proxy=proxy,
        endpoints=kept.endpoints.endpoints if kept.endpoints else (),
        preferred=kept.last_tactic,
    )
    try:
        enrollment = await _ask_collector(access, old, new, resumed)
    except CollectorRefused:
        discard_rotation(directory)
        raise
    install_new_key(directory, enrollment)
    return Rotated(
        old_key_id=key_id(old),
        new_key_id=key_id(new),
        probe_id=enrollment.get("probe_id", ""),
        status=enrollment.get("status", ""),
        resumed=resumed,
    )
