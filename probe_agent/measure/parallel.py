"""Measuring a long list on every core: the domains shared by worker processes.

One engine in one process is bound by one core (TLS handshakes and the event
loop are CPU work). For a long list, ``measure`` runs an engine in this process
and in ``workers - 1`` forked ones, each with its own event loop and a share of
the concurrency. They take the next domain from one shared cursor as they free a
slot, so a busier process (this one also writes every result) simply takes
fewer, and all end together. The parent reports every result as it arrives. A
worker that dies takes its unreported domains with it: they are reported as
errors, never silently dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import multiprocessing
import os
import pickle
import resource
import sys
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from probe_agent.measure.engine import DomainError, Engine, EngineConfig, Result, StopMeasuring

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


# Results cross from a worker to this process through a pipe. A worker writes
# them from its event loop, so a full pipe would hold its measurements up: ask
# for a large one (Linux; 1 MiB is the unprivileged ceiling, about 300 results).
PIPE_BYTES = 1 << 20


# How long a process waits for the cursor's lock before it gives up taking
# domains: only a worker killed inside the few instructions that hold it could
# keep it that long, and then the domains left are reported, not waited for.
CURSOR_LOCK_TIMEOUT = 5.0


class SharedCursor:
    """An iterator over *names* shared by processes: each name is taken exactly once.

    The names themselves are in every process (inherited at the fork); only the
    position is shared, in a ``multiprocessing.Value``.
    """

    def __init__(self, names: list[str], position: Any) -> None:
        self.names = names
        self.position = position
        self.stuck = False

    def __iter__(self) -> SharedCursor:
        return self

    def __next__(self) -> str:
        lock = self.position.get_lock()
        if self.stuck or not lock.acquire(timeout=CURSOR_LOCK_TIMEOUT):
            self.stuck = True  # once: every later call ends at once, not after its own wait
            raise StopIteration
        try:
            index: int = self.position.value
            if index >= len(self.names):
                raise StopIteration
            self.position.value = index + 1
        finally:
            lock.release()
        return self.names[index]


def _worker(config: EngineConfig, cursor: SharedCursor, concurrency: int, conn: Connection) -> None:
    def on_result(result: Result) -> None:
        if isinstance(result, DomainError):
            # The exception may not pickle; its text is what gets reported.
            result = DomainError(result.domain, RuntimeError(repr(result.error)))
        conn.send(("result", result))

    asyncio.run(Engine(config).measure_all(cursor, concurrency, on_result))
    conn.send(("done", None))
    conn.close()


def _widen(conn: Connection) -> None:
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or over the limit
        fcntl.fcntl(conn.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)


def measure_in_processes(
    config: EngineConfig,
    names: list[str],
    concurrency: int,
    workers: int,
    on_result: Callable[[Result], None],
) -> None:
    """Measure *names* in *workers* processes: this one and ``workers - 1`` forked ones.

    This process measures too while it relays the others' results
    (one process fewer than workers + a relay: the memory goal counts them all).
    Its event loop reads each worker's pipe as data arrives (no thread, no
    polling), and sees a worker's end as the end of its pipe.
    """
    # No event loop runs yet in this process: fork is safe (and fast) on Linux.
    ctx: multiprocessing.context.DefaultContext | Any = (
        multiprocessing.get_context("fork")
        if sys.platform == "linux"
        else multiprocessing.get_context("spawn")
    )
    cursor = SharedCursor(names, ctx.Value("q", 0))
    per_worker = max(1, -(-concurrency // workers))
    gc.freeze()  # keep the collector from touching (and so copying) the shared pages
    procs: list[Any] = []
    readers: list[Connection] = []
    for _ in range(workers - 1):
        reader, writer = ctx.Pipe(duplex=False)
        _widen(writer)
        proc = ctx.Process(target=_worker, args=(config, cursor, per_worker, writer), daemon=True)
        proc.start()
        # Only the worker holds the write end now: when it exits, for whatever
        # reason, its pipe ends, and the workers forked later do not inherit it.
        writer.close()
        procs.append(proc)
        readers.append(reader)
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
        asyncio.run(_measure_and_relay(config, cursor, per_worker, readers, report))
    finally:
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for reader in readers:
            reader.close()
        gc.unfreeze()
    if stopped:
        return
    for name in names:
        if name not in reported:
            on_result(DomainError(name, RuntimeError("its worker process died")))


async def _relay(readers: list[Connection], report: Callable[[Result], None]) -> None:
    """Report every worker's results until each has said done or gone away."""
    loop = asyncio.get_running_loop()
    finished = loop.create_future()
    open_readers = set(readers)

    def close(reader: Connection) -> None:
        loop.remove_reader(reader.fileno())
        open_readers.discard(reader)
        if not open_readers and not finished.done():
            finished.set_result(None)

    def readable(reader: Connection) -> None:
        try:
            while reader.poll():  # every whole message already here, then back to the loop
                kind, payload = reader.recv()
                if kind == "done":
                    close(reader)
                    return
                report(payload)
        except (EOFError, OSError, pickle.UnpicklingError):
            close(reader)  # the worker died (mid-message, perhaps); its domains are reported
        except StopMeasuring:
            for other in list(open_readers):
                close(other)  # the workers are killed; the local engine stops at its next result

    for reader in readers:
        loop.add_reader(reader.fileno(), readable, reader)
    try:
        if open_readers:
            await finished
    finally:
        for reader in list(open_readers):
            loop.remove_reader(reader.fileno())


async def _measure_and_relay(
    config: EngineConfig,
    cursor: SharedCursor,
    concurrency: int,
    readers: list[Connection],
    report: Callable[[Result], None],
) -> None:
    async with asyncio.TaskGroup() as tg:
        tg.create_task(_relay(readers, report))
        tg.create_task(Engine(config).measure_all(cursor, concurrency, report))
