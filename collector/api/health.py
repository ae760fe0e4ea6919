"""``GET /healthz`` (liveness) and ``GET /readyz`` (readiness: collector.services.health)."""

from __future__ import annotations

import asyncio

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from collector.services import health

router = APIRouter(include_in_schema=False)
READY_TIMEOUT = 3.0  # seconds /readyz waits for the database before it says not ready


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: the process answers (nothing else: see services.health)."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Readiness: database reachable, schema new enough, loops alive; else 503."""
    state = request.app.state
    try:
        ready = await asyncio.wait_for(
            anyio.to_thread.run_sync(health.readiness, state.engine, state.loops),
            timeout=READY_TIMEOUT,
        )
    except TimeoutError:
        ready = health.Readiness(False, {"database": "timeout"}, "the database did not answer")
    if ready.ready:
        return JSONResponse(ready.to_json())
    error = {"code": "err_not_ready", "message": ready.problem or "not ready"}
    return JSONResponse({"error": error, **ready.to_json()}, status_code=503)
