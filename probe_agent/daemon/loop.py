"""The volunteer's daemon: one round every interval, until SIGTERM.

Each round is ``round.run_round`` (check in, measure, sign, spool, submit),
which answers its exit status and the schedule the collector handed out (or,
when it could not be reached, the last one recorded). The
wait between rounds is that interval (or ``--interval``; else 300 s) with
+-10 % jitter, so that probes do not all knock at once; after a failed round
the next attempt backs off exponentially with jitter (10 s doubling up to the
interval), so a collector coming back is not stampeded and a blocked collector
is not hammered. Measurements of failed rounds wait in the spool.

Retests of one (address, port) are spaced at least ``retest_spacing`` apart
(default 180 s, from the round's schedule or ``--retest-spacing``): after an SNI trigger
the GFW blocks the (client, server, port) triple for 120-180 s, and a probe
measuring that triple again sooner would record the residue as a new block.

SIGTERM (or Ctrl-C) stops the round under way, submits what the spool holds
within a short grace period, and exits 0: nothing measured is lost, the rest
is submitted by the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from probe_agent.daemon.round import RoundResult, RunOptions, flush_spool, run_round
from probe_agent.measure.engine import Engine, EngineConfig
from probe_agent.state.status import DEFAULT_INTERVAL

FIRST_BACKOFF = 10.0
JITTER = 0.1
FLUSH_GRACE = 15.0  # seconds SIGTERM leaves for submitting the spool


class AddressSpacer:
    """Holds a dial of (ip, port) until ``spacing`` seconds after the previous one."""

    def __init__(self, spacing: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.spacing = spacing
        self.clock = clock
        self._last: dict[tuple[str, int], float] = {}

    async def wait(self, ip: str, port: int) -> None:
        key = (ip, port)
        now = self.clock()
        previous = self._last.get(key)
        start = now if previous is None else max(now, previous + self.spacing)
        self._last[key] = start  # reserve the slot before sleeping: later callers queue behind
        if start > now:
            await asyncio.sleep(start - now)
        if len(self._last) > 100_000:  # a bound on memory: forget slots long past
            horizon = self.clock() - self.spacing
            self._last = {k: t for k, t in self._last.items() if t > horizon}


@dataclass(frozen=True, slots=True)
class DaemonOptions:
    interval: float | None = None  # overrides the collector's
    retest_spacing: float | None = None  # overrides the collector's (default 180 s)


def _follow(result: RoundResult, daemon: DaemonOptions, spacer: AddressSpacer) -> None:
    """Space retests as the round's schedule says, unless ``--retest-spacing`` did."""
    spacing = result.schedule.retest_spacing_seconds
    if daemon.retest_spacing is None and spacing is not None:
        spacer.spacing = spacing


def _interval(result: RoundResult, daemon: DaemonOptions) -> float:
    """``--interval``, else the round's schedule, else the collector's default."""
    return daemon.interval or result.schedule.interval_seconds or DEFAULT_INTERVAL


def next_wait(ok: bool, failures: int, interval: float, rng: random.Random) -> float:
    """Seconds until the next round: the interval with jitter, or a backoff after failures."""
    if ok:
        return interval * rng.uniform(1 - JITTER, 1 + JITTER)
    backoff: float = min(interval, FIRST_BACKOFF * 2.0 ** max(0, failures - 1))
    return backoff * rng.uniform(0.5, 1.0)


async def run_daemon(
    options: RunOptions,
    daemon: DaemonOptions,
    *,
    report: Callable[[str], None] | None = None,
    rng: random.Random | None = None,
) -> int:
    rng = rng or random.SystemRandom()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    spacer = AddressSpacer(daemon.retest_spacing if daemon.retest_spacing is not None else 180.0)

    def make_engine(config: EngineConfig) -> Engine:
        return Engine(config, address_gate=spacer.wait)

    extra = {} if report is None else {"report": report}
    failures = 0
    try:
        while not stop.is_set():
            round_task = asyncio.create_task(run_round(options, make_engine=make_engine, **extra))
            stopping = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait(
                {round_task, stopping}, return_when=asyncio.FIRST_COMPLETED
            )
            if round_task not in done:
                round_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await round_task
                break
            stopping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stopping
            result = round_task.result()
            failures = 0 if result.ok else failures + 1
            _follow(result, daemon, spacer)
            wait = next_wait(result.ok, failures, _interval(result, daemon), rng)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
        # Stopping: what the spool holds goes now if the collector answers quickly.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(flush_spool(options, **extra), FLUSH_GRACE)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return 0
