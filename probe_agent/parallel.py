"""Measuring a long list on every core: the domains split across worker processes.

One engine in one process is bound by one core (TLS handshakes and the event
loop are CPU work). For a long list, ``measure`` shards the domains round-robin
across worker processes, each with its own event loop and a share of the
concurrency, and the parent reports every result as it arrives. A worker that
dies takes its unreported domains with it: they are reported as errors, never
silently dropped.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import queue
import resource
import sys
from collections.abc import Callable
from typing import Any

from probe_agent.engine import DomainError, Engine, EngineConfig, Result, StopMeasuring

DOMAINS_PER_WORKER = 200  # below this, a second process costs more than it gains
# File descriptors one in-flight domain may hold: every DNS query at once
# (resolvers x UDP/TCP x A/AAAA), one connection per address, some slack.
FDS_PER_RESOLVER = 4
FDS_SLACK = 64


def auto_workers(domain_count: int) -> int:
    return max(1, min(os.cpu_count() or 1, domain_count // DOMAINS_PER_WORKER))


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def fd_bounded_concurrency(concurrency: int, config: EngineConfig, fd_limit: int) -> int:
    """The largest concurrency (at most *concurrency*) whose sockets fit in *fd_limit*."""
    per_domain = FDS_PER_RESOLVER * len(config.resolvers) + 2 * len(config.injection_sinks) + 2
    return max(1, min(concurrency, (fd_limit - FDS_SLACK) // per_domain))


def _worker(config: EngineConfig, shard: list[str], concurrency: int, out: Any) -> None:
    def on_result(result: Result) -> None:
        if isinstance(result, DomainError):
            # The exception may not pickle; its text is what gets reported.
            result = DomainError(result.domain, RuntimeError(repr(result.error)))
        out.put(("result", result))

    asyncio.run(Engine(config).measure_all(shard, concurrency, on_result))
    out.put(("done", None))


def measure_in_processes(
    config: EngineConfig,
    names: list[str],
    concurrency: int,
    workers: int,
    on_result: Callable[[Result], None],
) -> None:
    """Measure *names* in *workers* processes: this one and ``workers - 1`` forked ones.

    This process measures a shard itself while it relays the others' results
    (one process fewer than workers + a relay: the memory goal counts them all).
    """
    # No event loop runs yet in this process: fork is safe (and fast) on Linux.
    ctx: multiprocessing.context.DefaultContext | Any = (
        multiprocessing.get_context("fork")
        if sys.platform == "linux"
        else multiprocessing.get_context("spawn")
    )
    out = ctx.Queue()
    shards = [names[i::workers] for i in range(workers)]
    per_worker = max(1, -(-concurrency // workers))
    gc.freeze()  # keep the collector from touching (and so copying) the shared pages
    procs = [
        ctx.Process(target=_worker, args=(config, shard, per_worker, out), daemon=True)
        for shard in shards[1:]
    ]
    for proc in procs:
        proc.start()
    reported: set[str] = set()
    stopped = False

    def report(result: Result) -> None:
        nonlocal stopped
        if stopped:
            raise StopMeasuring
        reported.add(result.domain)
        try:
            on_result(result)
        except StopMeasuring:
            stopped = True
            for proc in procs:
                proc.kill()
            raise

    try:
        asyncio.run(_measure_and_relay(config, shards[0], per_worker, out, procs, report))
    finally:
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        out.close()
        gc.unfreeze()
    if stopped:
        return
    for name in names:
        if name not in reported:
            on_result(DomainError(name, RuntimeError("its worker process died")))


async def _measure_and_relay(
    config: EngineConfig,
    shard: list[str],
    concurrency: int,
    out: Any,
    procs: list[Any],
    report: Callable[[Result], None],
) -> None:
    loop = asyncio.get_running_loop()

    def next_message() -> tuple[str, Any] | None:
        try:
            message: tuple[str, Any] = out.get(timeout=0.2)
        except queue.Empty:
            return None
        return message

    async def relay() -> None:
        finished = 0
        while finished < len(procs):
            message = await loop.run_in_executor(None, next_message)
            if message is None:
                if all(not p.is_alive() for p in procs) and out.empty():
                    return  # every worker is gone, some without saying done
                continue
            kind, payload = message
            if kind == "done":
                finished += 1
                continue
            try:
                report(payload)
            except StopMeasuring:
                return  # the workers are killed; the local engine stops at its next result

    async with asyncio.TaskGroup() as tg:
        tg.create_task(relay())
        tg.create_task(Engine(config).measure_all(shard, concurrency, report))
