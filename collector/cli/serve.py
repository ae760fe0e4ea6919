"""``blockwatch-collector serve``: settings -> process setup -> uvicorn, one process or several.

The options are the settings' own (collector/cli/options.py builds them from
``CollectorSettings``). With ``--workers 1`` this process serves the app, which
runs the migrations in its lifespan. With more, migrations run once here first,
and each worker process builds its app with ``create_app_from_env``
(collector/api/app.py) from the settings exported here whole
(``CollectorSettings.export``): one private variable, no per-field re-encoding.
With ``--metrics-port`` a private listener serves ``/metrics`` beside them
(collector/api/metrics_listener.py), from this process.
"""

from __future__ import annotations

import gc
import logging
import os
import tempfile
from typing import Any

from collector.api.metrics_listener import metrics_listener
from collector.cli.common import sessions
from collector.cli.options import settings_command
from collector.core.settings import WORKER_SETTINGS_VARIABLE, CollectorSettings

# What each worker process runs (a factory: it builds its own app).
WORKER_FACTORY = "collector.api.app:create_app_from_env"


def serve(settings: CollectorSettings) -> None:
    """Run the API, /metrics and the web pages (migrations run first)."""
    _configure_process()
    if settings.workers == 1:
        _run_single(settings)
    else:
        _run_workers(settings)


def _configure_process() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # Many short-lived objects per request, few cycles: collect the young generation rarely.
    gc.set_threshold(50_000, 50, 100)


def _uvicorn_options(settings: CollectorSettings) -> dict[str, Any]:
    # access_log off: uvicorn's access log prints every client's address.
    return {
        "host": settings.host,
        "port": settings.port,
        "access_log": False,
        "log_level": "info",
        "server_header": False,
    }


def _run_single(settings: CollectorSettings) -> None:
    import uvicorn  # noqa: PLC0415 (only serve needs it)

    from collector.api.app import create_app  # noqa: PLC0415

    app = create_app(settings)
    with metrics_listener(settings):
        uvicorn.run(app, **_uvicorn_options(settings))


def _run_workers(settings: CollectorSettings) -> None:
    import uvicorn  # noqa: PLC0415

    with sessions(settings), tempfile.TemporaryDirectory(prefix="blockwatch-metrics-") as tmp:
        # The workers are new processes: they inherit the environment, nothing else.
        os.environ[WORKER_SETTINGS_VARIABLE] = settings.export()
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tmp
        # The private listener runs here, in the parent: it reads every worker's series.
        with metrics_listener(settings):
            uvicorn.run(
                WORKER_FACTORY, factory=True, workers=settings.workers, **_uvicorn_options(settings)
            )


command = settings_command(serve)
