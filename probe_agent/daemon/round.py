"""One round of the volunteer probe: check in, measure, sign, spool, submit (``run --once``).

Where this sits in the data flow: it joins the stages the other modules
provide. ``identity`` gives the key (generated on first use) and whether it is
enrolled; ``client`` enrolls it if not, checks in and gets the targets; the
``engine`` measures them with the same options as ``measure``; each
measurement is scrubbed (``privacy``: this machine's addresses and the one the
check-in said the collector saw, with their /24 and /64) and signed the moment
it is done (purpose ``measurement``) and put
in the ``spool`` before anything is submitted; the spool is then emptied into
the collector in batches of ``client.MAX_BATCH``, each acknowledged once stored
(the batches are made here, and only here). ``status`` records the check-in,
its schedule and the last error. When the collector cannot be reached, the
last targets recorded are measured anyway and wait in the spool.

``run_round`` answers a ``RoundResult``: the exit status and the schedule the
check-in handed out (or the last one recorded), which the daemon
(``daemon.loop``) waits by. ``run_once`` is its exit status.

Exit status: 0 when every target was measured and every measurement stored
(``accepted`` or ``duplicate``), 1 otherwise. What is printed (stderr) is
counts and failure kinds only: never a domain, an address or the collector's URL.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from probe_agent.daemon import privacy
from probe_agent.daemon.client import (
    DEFAULT_TIMEOUT,
    MAX_BATCH,
    CheckIn,
    CollectorAccess,
    CollectorClient,
    ItemAnswer,
    connect,
)
from probe_agent.measure.decoys import DEFAULT_POOL, blocked_decoys
from probe_agent.measure.engine import DomainError, Engine, EngineConfig, Result
from probe_agent.protocol.document import measurement_document
from probe_agent.protocol.endpoints import EndpointsError
from probe_agent.protocol.envelope import Purpose, sign
from probe_agent.protocol.errors import CollectorRefused, CollectorUnreachable, IdentityError
from probe_agent.protocol.inputs import DeclaredNetwork
from probe_agent.protocol.messages import N_, Message, Translate, error_text, untranslated
from probe_agent.state import decoys, reach
from probe_agent.state.identity import Identity
from probe_agent.state.spool import Spool
from probe_agent.state.status import (
    Schedule,
    cached_schedule,
    record_checkin,
    record_error,
    record_schedule,
)

EXIT_OK, EXIT_INCOMPLETE = 0, 1
ROLE = "probe"
CLOCK_SKEW_WARNING = 60.0  # seconds; the collector refuses documents 300 s in the future
ROUND_JITTER = 2.0  # seconds: each domain starts after a random wait up to this

log = logging.getLogger("blockwatch.probe.runner")

# What a volunteer can do about a collector's refusal (docs/api.md "Errors").
_ADVICE = {
    "err_probe_pending": N_("this probe waits for the collector's admin to approve it"),
    "err_revoked_key": N_("the collector revoked this probe's key"),
    "err_invalid_token": N_("the enrollment token is unknown, expired or used up"),
    "err_timestamp_out_of_window": N_(
        "the collector refused the signing time: check this machine's clock"
    ),
    "err_rate_limited": N_("the collector asks this probe to slow down"),
}


@dataclass(frozen=True, slots=True)
class RunOptions:
    collectors: tuple[str, ...]
    state_dir: Path
    engine: EngineConfig
    concurrency: int = 32
    enroll_token: str | None = None
    # The collector key's fingerprint prefix the enrollment token carried (state.reach).
    collector_anchor: str | None = None
    collector_pin: str | None = None  # base64 SHA-256 of the collector certificate's key
    collector_doh: str | None = None  # a DNS-over-HTTPS server for the collector's name
    # The volunteer's own decoy pool (run --decoy-sni); empty: the collector's, else
    # measure.decoys.DEFAULT_POOL. One name is drawn each round.
    decoys: tuple[str, ...] = ()
    jitter: float = ROUND_JITTER  # seconds a domain may wait before it starts
    declared: DeclaredNetwork | None = None
    region: str | None = None  # --region CN-HA (ISO 3166-2), counts once vouched
    collector_timeout: float = DEFAULT_TIMEOUT
    # socks5://, socks5h://, socks4://, http://: the collector is reached through it only.
    proxy: str | None = None
    # "control": an uncensored vantage adding control measurements (needs a control token).
    role: str = ROLE
    # The volunteer lets this probe's signed measurements appear in evidence bundles.
    public_evidence: bool = False
    # What the collectors saw this probe come from, kept in memory across the
    # daemon's rounds (the same options serve every round) for scrubbing.
    seen: privacy.SeenAddresses = field(
        default_factory=privacy.SeenAddresses, compare=False, repr=False
    )


@dataclass(frozen=True, slots=True)
class RoundResult:
    """How a round went: its exit status, and the schedule to keep until the next one."""

    exit_status: int
    schedule: Schedule  # the check-in's, else the last one recorded (fields may be None)

    @property
    def ok(self) -> bool:
        return self.exit_status == EXIT_OK


@dataclass(slots=True)
class RoundSummary:
    targets: int = 0
    measured: int = 0
    not_measured: int = 0  # an error of ours stopped the domain: nothing to submit
    accepted: int = 0
    duplicate: int = 0
    rejected: int = 0
    unsent: int = 0  # measured and signed, but the submission failed as a whole

    def count(self, results: list[ItemAnswer]) -> None:
        for result in results:
            if result.status == "accepted":
                self.accepted += 1
            elif result.status == "duplicate":
                self.duplicate += 1
            else:
                self.rejected += 1

    @property
    def complete(self) -> bool:
        """Every target measured and the spool emptied into the collector, nothing refused."""
        return (
            self.not_measured == 0
            and self.measured == self.targets
            and self.unsent == 0
            and self.rejected == 0
        )

    def line(self) -> str:
        return (
            f"round: {self.targets} targets, {self.measured} measured, "
            f"{self.accepted} accepted, {self.duplicate} duplicate, {self.rejected} rejected"
            + (f", {self.not_measured} not measured" if self.not_measured else "")
            + (f", {self.unsent} not submitted" if self.unsent else "")
        )


def _stderr(line: str) -> None:
    print(f"blockwatch-probe: {line}", file=sys.stderr, flush=True)


def _code(error: CollectorRefused | CollectorUnreachable) -> str:
    """A short code for status (never a message: messages may name an address)."""
    if isinstance(error, CollectorRefused):
        return error.code.removeprefix("err_") or "collector_error"
    return "collector_unreachable"


def describe(
    error: CollectorRefused | CollectorUnreachable, gettext: Translate = untranslated
) -> str:
    """A collector failure for the volunteer: advice and code, no address.

    English for the daemon's lines (logs stay English); the CLI passes its *gettext*."""
    if isinstance(error, CollectorUnreachable):
        return error_text(error, gettext)
    default = (
        N_("the collector failed")
        if error.status >= 500
        else N_("the collector refused the request")
    )
    advice = Message(_ADVICE.get(error.code, default))
    code = f"HTTP {error.status} {error.code}"
    if error.retry_after is None:
        return Message(N_("%(advice)s (%(code)s)"), advice=advice, code=code).render(gettext)
    return Message(
        N_("%(advice)s (%(code)s, retry after %(seconds)s s)"),
        advice=advice,
        code=code,
        seconds=f"{error.retry_after:g}",
    ).render(gettext)


def _skew_seconds(server_time: str) -> float | None:
    try:
        server = datetime.fromisoformat(server_time.replace("Z", "+00:00"))
    except ValueError:
        return None
    if server.tzinfo is None:
        return None
    return (datetime.now(UTC) - server).total_seconds()


async def _enroll(client: CollectorClient, identity: Identity, options: RunOptions) -> None:
    if options.collector_anchor is not None:
        reach.anchor(options.state_dir, options.collector_anchor)
    answer = await client.enroll(
        options.enroll_token, options.role, options.declared, region=options.region
    )
    key_id = answer.get("collector_key_id")
    # The collector's key is checked against the token's anchor, then pinned: the
    # endpoint lists of every later check-in must be signed by it.
    reach.pin(options.state_dir, key_id if isinstance(key_id, str) else None)
    identity.record(
        probe_id=answer["probe_id"],
        status=answer["status"],
        role=answer.get("role") if isinstance(answer.get("role"), str) else options.role,
        collector=client.answered_by,
    )
    log.debug("enrolled (status %s)", answer["status"])


async def _check_in(
    client: CollectorClient, identity: Identity, options: RunOptions, spool: Spool
) -> CheckIn:
    """Enroll when this key never was; check in; re-enroll once if the collector forgot the key."""
    if not identity.enrolled:
        await _enroll(client, identity, options)
    depth, evicted = spool.depth(), spool.evicted_total()
    try:
        checkin = await client.checkin(
            options.declared,
            via_proxy=options.proxy is not None,
            spool_depth=depth,
            evicted=evicted,
            public_evidence=options.public_evidence,
            region=options.region,
        )
    except CollectorRefused as exc:
        # A collector restored from an old backup, or another one of the list,
        # may not know the key: enrolling again is idempotent (docs/api.md).
        if exc.code != "err_unknown_key":
            raise
        await _enroll(client, identity, options)
        checkin = await client.checkin(
            options.declared,
            via_proxy=options.proxy is not None,
            spool_depth=depth,
            evicted=evicted,
            public_evidence=options.public_evidence,
            region=options.region,
        )
    options.seen.remember(checkin.seen_address)  # in memory only: see privacy.SeenAddresses
    _keep_endpoints(options, checkin)
    if checkin.status != identity.state.status or checkin.probe_id != identity.state.probe_id:
        identity.record(probe_id=checkin.probe_id, status=checkin.status)
    return checkin


def _keep_endpoints(options: RunOptions, checkin: CheckIn) -> None:
    """Keep the check-in's endpoint list once it verifies; a list that does not is
    refused whole (the one kept before stays), and the round goes on."""
    try:
        reach.keep_endpoints(options.state_dir, checkin.endpoints)
    except EndpointsError as exc:
        log.warning("refused the collector's endpoint list: %s", exc)
        record_error(options.state_dir, "endpoints_refused")


async def _measure_and_sign(
    make_engine: Callable[[EngineConfig], Engine],
    options: RunOptions,
    identity: Identity,
    schedule: Schedule,
    summary: RoundSummary,
    spool: Spool,
) -> None:
    """Measure the schedule's targets in a shuffled order, with this round's decoy."""
    # This machine's addresses and what the collectors saw (behind NAT, the public
    # address; through --proxy, the proxy's), with their /24 and /64.
    scrubber = privacy.scrubber_for(options.seen, options.engine.lab_networks)
    pool = options.decoys or schedule.decoys or DEFAULT_POOL
    engine = make_engine(
        dataclasses.replace(options.engine, decoy_sni=decoys.draw(pool, options.state_dir))
    )
    targets = list(schedule.targets)
    random.SystemRandom().shuffle(targets)  # not the same order every round
    blocked: set[str] = set()

    def on_result(result: Result) -> None:
        if isinstance(result, DomainError):
            summary.not_measured += 1
            log.debug("internal error: %s", type(result.error).__name__)
            return
        summary.measured += 1
        blocked.update(blocked_decoys(result))
        log.debug("measured %s: hints %s", result.domain, ",".join(result.hints) or "none")
        # Signed as soon as it is done, so that signed_at is the measurement's time,
        # and on disk before any submission is tried: a crash loses nothing.
        observations = scrubber.scrub(result.to_dict())  # never the volunteer's address
        document = measurement_document(
            observations,
            options.declared,
            via_proxy=options.proxy is not None,
            region=options.region,
        )
        envelope = sign(identity.key, Purpose.MEASUREMENT, document)
        spool.put(envelope, result.started_at, observations["measurement_id"])

    await engine.measure_all(
        targets, options.concurrency, on_result, schedule.ports, jitter=options.jitter
    )
    if blocked:  # reported by the measurements themselves; set aside for the next rounds
        log.info("%d decoy name(s) seen blocked here: set aside", len(blocked))
        decoys.record_blocked(options.state_dir, blocked)


async def _submit(
    client: CollectorClient, spool: Spool, summary: RoundSummary
) -> CollectorRefused | CollectorUnreachable | None:
    """Empty the spool batch by batch (this round's and any earlier round's leftovers).

    Stored (accepted or duplicate) items are acknowledged, refused ones dropped
    and counted by code; whatever a failed submission held stays for next time.
    """
    while items := spool.batch(MAX_BATCH):
        try:
            results = await client.submit([item.envelope for item in items])
        except (CollectorRefused, CollectorUnreachable) as exc:
            summary.unsent = spool.depth()
            return exc
        summary.count(results)
        spool.ack(items[r.index].id for r in results if r.status in ("accepted", "duplicate"))
        for r in results:
            if r.status == "rejected":
                spool.reject([items[r.index].id], r.error_code or "err_other")
        if not results:
            summary.unsent = spool.depth()
            return None
    return None


async def run_round(
    options: RunOptions,
    *,
    report: Callable[[str], None] = _stderr,
    make_engine: Callable[[EngineConfig], Engine] = Engine,
) -> RoundResult:
    """One round: its exit status and the schedule the collector handed out.

    *report* prints a line for the volunteer; *make_engine* lets tests measure
    with a dialer that refuses anything off loopback.

    Raises ``IdentityError`` (a key file others can read, an unwritable state
    directory) before anything is sent.
    """
    identity = Identity.open(options.state_dir)
    summary = RoundSummary()
    with Spool(options.state_dir) as spool:
        return await _round(options, identity, summary, spool, report, make_engine)


async def run_once(
    options: RunOptions,
    *,
    report: Callable[[str], None] = _stderr,
    make_engine: Callable[[EngineConfig], Engine] = Engine,
) -> int:
    """One round (``run --once``); 0 when every target was measured and stored, 1 otherwise."""
    result = await run_round(options, report=report, make_engine=make_engine)
    return result.exit_status


def _client(options: RunOptions, identity: Identity) -> CollectorClient:
    kept = reach.load_reach(options.state_dir)
    access = CollectorAccess(  # the proxy, when given, carries every request
        options.collectors,
        timeout=options.collector_timeout,
        # One --ca-file for both: a lab's CA signs the instances and the collector alike.
        ca_file=options.engine.ca_file,
        proxy=options.proxy,
        endpoints=kept.endpoints.endpoints if kept.endpoints else (),
        pin=options.collector_pin,
        preferred=kept.last_tactic,
        doh=options.collector_doh,
    )
    return connect(access, identity.key)


@contextlib.asynccontextmanager
async def _session(options: RunOptions, identity: Identity) -> AsyncIterator[CollectorClient]:
    """A client whose attempts are counted in the state when it closes, whatever happened."""
    async with _client(options, identity) as client:
        try:
            yield client
        finally:
            answered = client.answered_way.key if client.answered_way else None
            attempts = [(a.way.key, a.ok, a.failure) for a in client.attempts]
            with contextlib.suppress(IdentityError):  # statistics never fail a round
                reach.record_attempts(options.state_dir, attempts, answered)


async def _round(
    options: RunOptions,
    identity: Identity,
    summary: RoundSummary,
    spool: Spool,
    report: Callable[[str], None],
    make_engine: Callable[[EngineConfig], Engine],
) -> RoundResult:
    async with _session(options, identity) as client:
        try:
            checkin = await _check_in(client, identity, options, spool)
        except reach.CollectorKeyMismatch as exc:
            record_error(options.state_dir, "collector_key_mismatch")
            report(f"error: {exc}: nothing was sent after the enrollment")
            return RoundResult(EXIT_INCOMPLETE, cached_schedule(options.state_dir))
        except (CollectorRefused, CollectorUnreachable) as exc:
            record_error(options.state_dir, _code(exc))
            report(f"error: {describe(exc)}")
            cached = cached_schedule(options.state_dir)
            if isinstance(exc, CollectorUnreachable) and cached.targets:
                # The collector (or its domain) is out of reach: measure the last
                # targets anyway and keep the evidence in the spool for later.
                await _measure_and_sign(make_engine, options, identity, cached, summary, spool)
                report(f"{summary.measured} measurement(s) of the last targets kept in the spool")
            return RoundResult(EXIT_INCOMPLETE, cached)
        schedule = _record(options.state_dir, checkin)
        if not _ready(checkin, report):
            return RoundResult(EXIT_INCOMPLETE, schedule)
        summary.targets = len(checkin.targets)
        await _measure_and_sign(make_engine, options, identity, schedule, summary, spool)
        error = await _submit(client, spool, summary)
        if error is not None:
            record_error(options.state_dir, _code(error))
            report(f"error: submitting: {describe(error)} ({summary.unsent} kept in the spool)")
    report(summary.line())
    return RoundResult(EXIT_OK if summary.complete else EXIT_INCOMPLETE, schedule)


def _record(state_dir: Path, checkin: CheckIn) -> Schedule:
    """Record the check-in (for ``status`` and the next outage); the schedule it handed out."""
    record_checkin(state_dir, datetime.now(UTC), checkin.interval_seconds)
    record_schedule(
        state_dir, checkin.retest_spacing_seconds, checkin.targets, checkin.ports, checkin.decoys
    )
    return Schedule(
        checkin.interval_seconds,
        checkin.retest_spacing_seconds,
        checkin.targets,
        checkin.ports,
        checkin.decoys,
    )


def _ready(checkin: CheckIn, report: Callable[[str], None]) -> bool:
    """Whether the probe may measure (active); warns of clock skew and skipped targets."""
    if checkin.status != "active":
        # docs/api.md answers a pending probe's check-in with 403 err_probe_pending;
        # a collector answering 200 with another status gets the same treatment.
        report(f"error: {_ADVICE.get('err_probe_pending')} (status {checkin.status})")
        return False
    skew = _skew_seconds(checkin.server_time)
    if skew is not None and abs(skew) > CLOCK_SKEW_WARNING:
        report(f"warning: this machine's clock is {skew:+.0f} s off the collector's")
    if checkin.invalid_targets:
        report(f"warning: skipped {checkin.invalid_targets} invalid target(s)")
    return True


async def flush_spool(options: RunOptions, *, report: Callable[[str], None] = _stderr) -> int:
    """Submit what the spool holds, without measuring (a stopping daemon's last act)."""
    identity = Identity.open(options.state_dir)
    summary = RoundSummary()
    with Spool(options.state_dir) as spool:
        if spool.depth() == 0:
            return EXIT_OK
        async with _session(options, identity) as client:
            error = await _submit(client, spool, summary)
    if error is not None:
        report(f"error: submitting: {describe(error)} ({summary.unsent} kept in the spool)")
        return EXIT_INCOMPLETE
    report(f"flushed: {summary.accepted} accepted, {summary.duplicate} duplicate")
    return EXIT_OK
