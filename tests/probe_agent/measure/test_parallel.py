"""measure_in_processes: each result relayed once, a dead worker's domains reported, a stop kept.

The engine is replaced by one that reports made-up measurements (forked workers
inherit the replacement): these tests are about the processes and the pipes
between them, not about measuring.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Iterable

import pytest

from probe_agent.measure import parallel
from probe_agent.measure.engine import DomainError, EngineConfig, Result, StopMeasuring
from probe_agent.measure.observations import Measurement
from probe_agent.protocol.inputs import Endpoint

CONFIG = EngineConfig(resolvers=(Endpoint("127.0.0.1", 53),))
PARENT = os.getpid()


def _measurement(domain: str, padding: int = 0) -> Measurement:
    return Measurement(
        measurement_id="m-" + domain,
        domain=domain,
        port=443,
        scheme="https",
        started_at="2026-11-21T00:00:00Z",
        software={"name": "test", "version": "0"},
        decoy_sni="example.com",
        hints=["x" * padding] if padding else [],
    )


class _FakeEngine:
    """Reports a measurement per domain; with ``die``, a forked worker dies at its first."""

    padding = 0
    die = False

    def __init__(self, config: EngineConfig) -> None:
        self.config = config

    async def measure_all(
        self, domains: Iterable[str], concurrency: int, on_result: Callable[[Result], None]
    ) -> None:
        for domain in domains:
            if self.die and os.getpid() != PARENT:
                os._exit(3)
            try:
                on_result(_measurement(domain, self.padding))
            except StopMeasuring:
                return
            # With ``die``, this process goes slowly enough for the worker to take a name.
            await asyncio.sleep(0.01 if self.die else 0)


@pytest.fixture(autouse=True)
def fake_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parallel, "Engine", _FakeEngine)
    monkeypatch.setattr(_FakeEngine, "padding", 0)
    monkeypatch.setattr(_FakeEngine, "die", False)


def _run(names: list[str], workers: int) -> list[Result]:
    results: list[Result] = []
    parallel.measure_in_processes(CONFIG, names, 8, workers, results.append)
    return results


def test_every_result_is_relayed_once() -> None:
    names = [f"d{i}.example" for i in range(300)]
    results = _run(names, workers=3)
    assert len(results) == len(names)  # the shared cursor hands out each name once
    assert sorted(r.domain for r in results) == sorted(names)
    assert all(isinstance(r, Measurement) for r in results)


def test_the_cursor_hands_out_each_name_once_then_stops() -> None:
    import multiprocessing

    cursor = parallel.SharedCursor(["a", "b", "c"], multiprocessing.Value("q", 0))
    assert [next(cursor), *cursor] == ["a", "b", "c"]
    assert list(cursor) == []  # and stays exhausted


def test_a_cursor_whose_lock_is_never_released_stops_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import multiprocessing

    monkeypatch.setattr(parallel, "CURSOR_LOCK_TIMEOUT", 0.05)
    position = multiprocessing.Value("q", 0)
    cursor = parallel.SharedCursor(["a", "b"], position)
    # Held by another thread, as a worker killed while holding it would leave it
    # (the lock is re-entrant for its own holder).
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with position.get_lock():
            held.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(5)
    try:
        started = time.monotonic()
        for _ in range(20):  # the engine's many tasks each ask
            assert list(cursor) == []
        assert time.monotonic() - started < 0.5  # one wait (0.05 s), not one per call
    finally:
        release.set()
        holder.join()


def test_results_larger_than_the_pipe_all_arrive(monkeypatch: pytest.MonkeyPatch) -> None:
    # About 8 MB through each worker's pipe: writes block, reads come in pieces.
    monkeypatch.setattr(_FakeEngine, "padding", 40_000)
    names = [f"d{i}.example" for i in range(400)]
    results = _run(names, workers=2)
    assert sorted(r.domain for r in results) == sorted(names)
    assert all(isinstance(r, Measurement) and len(r.hints[0]) == 40_000 for r in results)


def test_a_dead_workers_domains_are_reported_as_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    # The forked worker dies holding the first name it takes; this process
    # measures every other one.
    monkeypatch.setattr(_FakeEngine, "die", True)
    names = [f"d{i}.example" for i in range(100)]
    started = time.monotonic()
    results = _run(names, workers=2)
    elapsed = time.monotonic() - started
    assert len(results) == len(names)
    assert sorted(r.domain for r in results) == sorted(names)  # nothing lost, nothing twice
    errors = [r for r in results if isinstance(r, DomainError)]
    assert len(errors) == 1
    assert "worker process died" in str(errors[0].error)
    assert elapsed < 4  # its pipe's end says it is gone: no waiting for the join's timeout


def test_a_stop_ends_the_run_and_the_workers() -> None:
    names = [f"d{i}.example" for i in range(2000)]
    seen: list[Result] = []
    before = set(_children())  # other fixtures' servers, if any, are not ours to count

    def on_result(result: Result) -> None:
        seen.append(result)
        if len(seen) == 3:
            raise StopMeasuring

    parallel.measure_in_processes(CONFIG, names, 8, 3, on_result)
    assert len(seen) == 3
    assert set(_children()) - before == set()


def _children() -> list[int]:
    """The live child processes of this one (the workers, if any survived)."""
    me = str(os.getpid())
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me and fields[0] != "Z":
            found.append(int(pid))
    return found
