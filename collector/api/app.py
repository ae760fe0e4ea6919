"""The FastAPI application: lifespan, limits, error rendering, routers.

``create_app(settings)`` builds the app; the lifespan makes the database engine
and session factory once, runs the migrations, and disposes of the engine at
shutdown. Errors are rendered once, here, as ``{"error": {"code", "message"}}``.
A pure-ASGI limit refuses bodies over ``max_body_bytes`` as they stream in, for
every route.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from collector import __version__
from collector.api import health, pages
from collector.api.deps import require_metrics_reader
from collector.api.ratelimit import RateLimiter
from collector.api.routes import events, evidence, measurements, probes, subscriptions, targets
from collector.core import metrics
from collector.core.clock import Clock, SystemClock
from collector.core.db import make_engine, make_session_factory, migrate
from collector.core.errors import CollectorError, RateLimited
from collector.core.keys import collector_key
from collector.core.settings import CollectorSettings
from collector.detection.loops import BackgroundLoops
from collector.services.admission import Admission
from collector.services.geo import Geolocator, make_geolocator
from collector.services.reachability import register_at_startup, signed_endpoints
from collector.services.regions import open_city_regions
from collector.services.subscriptions import seal_at_startup

log = logging.getLogger("blockwatch.collector")
# Batches verified and stored at once per process (CPU- and GIL-bound work).
INGEST_THREADS = 4


def error_response(status: int, code: str, message: str, **headers: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


class BodyLimit:
    """Refuse request bodies over *limit* bytes, by Content-Length or while streaming."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                metrics.REJECTIONS.labels(reason="body_too_large").inc()
                await error_response(413, "err_body_too_large", "request body too large")(
                    scope, receive, send
                )
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise CollectorError("request body too large", "err_body_too_large")
            return message

        await self.app(scope, limited, send)


def create_app(
    settings: CollectorSettings,
    *,
    geolocator: Geolocator | None = None,
    clock: Clock | None = None,
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.database_url)
        migrate(engine)
        warm_up = getattr(app.state.geolocator, "load", None)
        if callable(warm_up):
            warm_up()  # ~0.1 s once, rather than on the first check-in
        app.state.engine = engine
        app.state.sessions = make_session_factory(engine)
        seal_at_startup(settings, app.state.sessions, app.state.clock.now())  # or refuse
        register_at_startup(settings, app.state.sessions)  # its own names become targets
        app.state.ingest_limiter = anyio.CapacityLimiter(INGEST_THREADS)
        loops = None
        if settings.detector:
            loops = BackgroundLoops(
                settings, app.state.clock, app.state.sessions, app.state.geolocator
            )
            loops.start()
        app.state.loops = loops
        try:
            yield
        finally:
            if loops is not None:
                await loops.close()
            engine.dispose()

    app = FastAPI(
        title="Blockwatch collector",
        version=__version__,
        lifespan=lifespan,
        description="Signed censorship measurements in; block status, events and alerts out.",
    )
    app.state.settings = settings
    metrics.BUILD_INFO.labels(version=__version__, python=platform.python_version()).set(1)
    app.state.clock = clock or SystemClock()
    app.state.geolocator = geolocator or make_geolocator(
        settings.geoip_country_db, settings.geoip_asn_db
    )
    app.state.city_regions = open_city_regions(settings.geoip_city_db)
    app.state.rate_limiter = RateLimiter(settings.probe_rate_limit)
    app.state.verify_limiter = RateLimiter(settings.verify_rate_limit)
    app.state.admission = Admission(
        settings, app.state.rate_limiter, RateLimiter(settings.unverified_rate_limit)
    )
    app.state.collector_key = collector_key(settings)  # before serving: refused, or made once
    app.state.signed_endpoints = signed_endpoints(  # handed out at every check-in
        settings, app.state.collector_key, app.state.clock.now()
    )
    routers = (probes, measurements, targets, events, evidence, subscriptions)
    for router in (module.router for module in routers):
        app.include_router(router, prefix="/api/v1")
    app.include_router(evidence.well_known)
    app.include_router(pages.router)  # the pages people read (no /api prefix)
    app.include_router(health.router)  # /healthz, /readyz
    _install_error_handlers(app)

    # Always a token here; the private listener asks none (collector/api/metrics_listener.py).
    @app.get("/metrics", include_in_schema=False, dependencies=[Depends(require_metrics_reader)])
    def prometheus_metrics() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(CollectorError)
    async def collector_error(_request: Request, exc: CollectorError) -> JSONResponse:
        if exc.status >= 500:
            log.error("internal error: %s", exc.code)
        else:
            metrics.REJECTIONS.labels(reason=metrics.reason(exc.code)).inc()
        headers = {}
        if isinstance(exc, RateLimited):
            headers["Retry-After"] = str(max(1, round(exc.retry_after)))
        status = 413 if exc.code == "err_body_too_large" else exc.status
        return error_response(status, exc.code, exc.message, **headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors: list[Any] = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            metrics.REJECTIONS.labels(reason="malformed_json").inc()
            return error_response(400, "err_malformed_json", "the body is not valid JSON")
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        metrics.REJECTIONS.labels(reason="validation").inc()
        return error_response(422, "err_validation", f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Starlette's own 400 is a body it could not parse (bad or too deeply nested JSON).
        codes = {400: "err_malformed_json", 404: "err_not_found", 405: "err_method_not_allowed"}
        code = codes.get(exc.status_code, f"err_http_{exc.status_code}")
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(RecursionError)
    async def too_deep(_request: Request, _exc: RecursionError) -> JSONResponse:
        # JSON nested thousands deep (any JSON body, any route): bad input, not a 500.
        metrics.REJECTIONS.labels(reason="malformed_json").inc()
        return error_response(400, "err_malformed_json", "the JSON is nested too deeply")

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error (%s)", type(exc).__name__)
        return error_response(500, "err_internal", "internal error")


def create_app_from_env() -> FastAPI:
    """What each ``serve --workers N`` process runs: the app of the settings ``serve``
    exported (or, run by hand under uvicorn, of ``BLOCKWATCH_*`` alone)."""
    return create_app(CollectorSettings.from_environment())
