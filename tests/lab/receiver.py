"""A webhook receiver for the lab: ``python -m tests.lab.receiver HOST PORT LOGFILE``.

Runs in a namespace on the lab's internet side and appends one JSON line per
request (arrival time, headers, body) to LOGFILE; the test verifies the
signatures itself.
"""

from __future__ import annotations

import json
import sys
import time

from aiohttp import web


def main(host: str, port: int, path: str) -> None:
    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        line = {"at": time.time(), "headers": dict(request.headers), "body": body.decode()}
        with open(path, "a", encoding="utf-8") as log:
            log.write(json.dumps(line) + "\n")
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    web.run_app(app, host=host, port=port, print=None)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
