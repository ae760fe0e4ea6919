"""The probe's TLS steps alone: connects and handshakes, nothing else.

Run by ``bench_measure.py`` beside the probe and blackbox_exporter, on the same
lab, targets and concurrency. For each target it runs the probe's own dialer
and handshake code (``probe_agent.measure.netio.SocketDialer``,
``probe_agent.measure.tls.tls_handshake``, the probe's two contexts): with
``--handshakes 2`` a connect and the decoy handshake (SNI ``example.com``, not
validated), then a second connect and the validated handshake with the real
name, as the probe does; with ``--handshakes 1`` only the second pair, which is
blackbox_exporter's ``tls_connect`` work without its DNS query.

No DNS, no HTTP, no record, no output until the end: its rate is an upper bound
for the probe's, and with one handshake it is the same work as blackbox's in
the probe's language and TLS library. Worker processes as the probe's (one per
core, forked, the concurrency split between them). Prints one JSON line per
target: ``{"domain": ..., "ok": true|false, "error": ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
from typing import Any

from probe_agent.measure.clock import MonotonicClock
from probe_agent.measure.engine import DEFAULT_DECOY_SNI
from probe_agent.measure.netio import SocketDialer
from probe_agent.measure.tls import TLSContexts, tls_handshake


async def handshake(
    dialer: SocketDialer,
    ip: str,
    sni: str,
    contexts: TLSContexts,
    args: argparse.Namespace,
    *,
    decoy: bool,
) -> None:
    stream = await dialer.connect(ip, args.port, args.timeout)
    try:
        obs, _ = await tls_handshake(
            stream,
            ip=ip,
            port=args.port,
            sni=sni,
            contexts=contexts,
            decoy=decoy,
            timeout=args.timeout,
            clock=MonotonicClock(),
        )
    finally:
        stream.close()
    if obs.failure:
        raise OSError(f"{sni}: {obs.failure}")


async def run(targets: list[tuple[str, str]], args: argparse.Namespace, concurrency: int) -> None:
    contexts = TLSContexts.create(args.ca_file)
    dialer = SocketDialer()
    pending = iter(targets)
    lines: list[str] = []

    async def worker() -> None:
        for name, ip in pending:
            error = None
            try:
                if args.handshakes == 2:
                    await handshake(dialer, ip, DEFAULT_DECOY_SNI, contexts, args, decoy=True)
                await handshake(dialer, ip, name, contexts, args, decoy=False)
            except (OSError, TimeoutError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            lines.append(json.dumps({"domain": name, "ok": error is None, "error": error}))

    async with asyncio.TaskGroup() as tg:
        for _ in range(concurrency):
            tg.create_task(worker())
    # One write per process at the end: the processes share stdout, and their
    # lines must not interleave (nor cost anything while the clock runs).
    data = "".join(line + "\n" for line in lines).encode()
    while data:
        data = data[os.write(1, data) :]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--targets", required=True, help="file of 'name ip' lines")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ca-file", required=True)
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--handshakes", type=int, choices=(1, 2), default=2)
    ap.add_argument("--timeout", type=float, default=5.0)
    args = ap.parse_args(argv)
    targets = [
        (name, ip)
        for name, ip in (line.split() for line in open(args.targets, encoding="ascii"))  # noqa: SIM115
    ]
    workers = max(1, args.workers)
    per_worker = max(1, -(-args.concurrency // workers))
    children: list[Any] = []
    for i in range(1, workers):
        child = multiprocessing.get_context("fork").Process(
            target=lambda i=i: asyncio.run(run(targets[i::workers], args, per_worker))
        )
        child.start()
        children.append(child)
    asyncio.run(run(targets[0::workers], args, per_worker))
    for child in children:
        child.join()
    return 0 if all(c.exitcode == 0 for c in children) else 1


if __name__ == "__main__":
    sys.exit(main())
