"""The private metrics listener: ``serve --metrics-host H --metrics-port P``.

A second, small HTTP server that answers ``GET /metrics`` without a token, for
a Prometheus on the loopback or a private network; the main listener keeps
asking for one (the admin or the metrics token). It runs in a thread of the
``serve`` process (collector/cli/serve.py) and answers ``metrics.exposition()``:
this process's series with one worker; under ``--workers N`` it runs in the
parent, which serves no request itself, and the exposition reads every
worker's series from the multiprocess directory, as the main listener's does.

It answers ``/metrics`` and nothing else, and logs no request (no address of
whoever scrapes it).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST

from collector.core import metrics
from collector.core.settings import CollectorSettings

DEFAULT_HOST = "127.0.0.1"


class _Handler(BaseHTTPRequestHandler):
    server_version = "blockwatch-metrics"
    sys_version = ""

    def do_GET(self) -> None:
        if self.path.partition("?")[0] != "/metrics":
            self._answer(404, b"not found\n", "text/plain; charset=utf-8")
            return
        self._answer(200, metrics.exposition(), CONTENT_TYPE_LATEST)

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """No access log: it would print the scraper's address."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


def address(settings: CollectorSettings) -> tuple[str, int] | None:
    """Where the private listener listens, or None when ``--metrics-port`` is not set."""
    if settings.metrics_port is None:
        return None
    return settings.metrics_host or DEFAULT_HOST, settings.metrics_port


@contextmanager
def metrics_listener(settings: CollectorSettings) -> Iterator[tuple[str, int] | None]:
    """Serve ``/metrics`` on the private address while the block runs (nothing if unset)."""
    where = address(settings)
    if where is None:
        yield None
        return
    server_class = _Server6 if ":" in where[0] else _Server
    try:
        server = server_class(where, _Handler)
    except OSError as exc:  # in use, or not an address of this machine: the operator's to fix
        raise SystemExit(f"error: the metrics listener cannot listen on {where}: {exc}") from None
    thread = threading.Thread(target=server.serve_forever, name="metrics-listener", daemon=True)
    thread.start()
    try:
        yield where[0], server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
