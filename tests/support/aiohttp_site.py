"""An aiohttp application served on a free loopback port, for the tests' peers
(webhook receivers, well-known files, a fake collector)."""

from __future__ import annotations

import ssl
from typing import Any

from aiohttp import web


async def serve_app(
    app: web.Application, *, ssl_context: ssl.SSLContext | None = None, **runner_options: Any
) -> tuple[web.AppRunner, int]:
    """Start *app* on 127.0.0.1 at a port the kernel picks: its runner (``cleanup()``
    stops it) and the port."""
    runner = web.AppRunner(app, **runner_options)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context).start()
    port: int = runner.addresses[0][1]
    return runner, port
