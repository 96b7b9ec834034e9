"""create_app(): routers, problem+json error handlers, and the per-process resources in app.state."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

import app.all_tables  # noqa: F401  (every table known to this process)
from app.artifacts.store import ArtifactStore
from app.config import Settings, get_settings
from app.console.router import mount_console
from app.datasets.router import router as datasets_router
from app.db import Database, is_connection_error
from app.deps import check_key_before_body, known_predict_key
from app.errors import AppError
from app.fleet.router import router as pools_router
from app.inference.cache import ModelCache
from app.inference.memory import freeze_long_lived
from app.inference.router import router as predict_router
from app.inference.service import Serving
from app.inference.traffic import TrafficCounters
from app.jobs.router import router as jobs_router
from app.jobs.stream import StreamHub
from app.observability.collectors import ServiceCollector
from app.observability.http import RequestMetrics
from app.observability.logs import configure_logging
from app.observability.router import router as metrics_router
from app.predictions.router import router as predictions_router
from app.problems import ERROR_RESPONSES, PROBLEM, document_problems
from app.public_text import ECHO_LIMIT, clip, public_text
from app.queue import make_celery
from app.quotas.router import router as usage_router
from app.registry.router import router as models_router
from app.request_ids import RequestIdMiddleware, current_request_id
from app.request_limits import RequestLimits
from app.strict_query import reject_unknown_query
from app.sweeps.router import router as sweeps_router
from app.teams.throttle import FailedAuthThrottle
from app.ttl_cache import TtlCache

log = logging.getLogger(__name__)
MAX_FIELD_ERRORS = 20  # a 422 lists at most this many invalid fields


def problem(
    status: int, title: str, detail: str, headers: dict[str, str] | None = None, **extra: object
) -> JSONResponse:
    """An RFC 9457 problem response; the detail never shows an absolute path, a repr or an unbounded echo."""
    body = {"type": "about:blank", "title": clip(title), "status": status, "detail": public_text(detail), **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def _field_errors(errors: Sequence[Any]) -> list[dict]:
    """Pydantic's errors without their inputs; a field name the client made up is echoed at most ECHO_LIMIT long."""
    return [
        {
            "field": clip(".".join(str(p) for p in e["loc"] if p != "body"), ECHO_LIMIT),
            "message": public_text(e["msg"], 300),
            "type": e["type"],
        }
        for e in errors[:MAX_FIELD_ERRORS]
    ]


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route of this path answers (the `Allow` header of a 405)."""
    return [
        method
        for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
        if any(r.matches({**request.scope, "method": method})[0] == Match.FULL for r in request.app.router.routes)
    ]


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def app_error(_: Request, exc: AppError) -> JSONResponse:
        return problem(exc.status, exc.title, exc.detail, headers=exc.headers, **exc.extra)

    @app.exception_handler(RequestValidationError)
    @app.exception_handler(ValidationError)
    async def validation_error(_: Request, exc: RequestValidationError | ValidationError) -> JSONResponse:
        errors = _field_errors(exc.errors())
        detail = "; ".join(f"{e['field'] or 'body'}: {e['message']}" for e in errors)
        return problem(422, "Invalid request", detail, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # Starlette names only the first route's methods; a path may have several
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return problem(exc.status_code, str(exc.detail), str(exc.detail), headers=headers)

    @app.exception_handler(DBAPIError)
    async def database_error(request: Request, exc: DBAPIError) -> JSONResponse:
        if is_connection_error(exc):
            return problem(503, "Database unavailable", "The database is unreachable right now; retry shortly.")
        if "NUL (0x00)" in str(exc.orig):  # PostgreSQL text cannot hold one (SQLite can: the check is here, once)
            return problem(422, "Invalid input", "Text fields cannot contain NUL characters (\\u0000); remove them.")
        request_id = current_request_id(request.scope) or ""
        log.error("database error, request id %s: %s", request_id, exc)
        detail = f"The request failed on a database error; it was logged with request id {request_id}."
        return problem(500, "Internal error", detail, request_id=request_id)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API application for `settings` (default: from the environment)."""
    settings = settings or get_settings()
    configure_logging(settings.log_format, settings.access_log)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.db = Database(settings.database_url)
        app.state.store = ArtifactStore.from_settings(settings)
        app.state.celery = make_celery(settings)
        app.state.auth_throttle = FailedAuthThrottle(settings.auth_failure_limit, settings.auth_failure_window_seconds)
        app.state.model_cache = ModelCache(
            settings.model_cache_size,
            max_batch=settings.predict_max_batch,
            max_wait_ms=settings.predict_max_wait_ms,
            workers=settings.predict_workers,
            threads=settings.predict_threads,
        )
        app.state.predict_keys = TtlCache(settings.predict_lookup_ttl_seconds)
        app.state.serving = Serving(
            app.state.store,
            app.state.model_cache,
            TtlCache(settings.predict_lookup_ttl_seconds),
            TrafficCounters(app.state.db),
        )
        app.state.stream_hub = StreamHub(
            app.state.db,
            poll_seconds=settings.stream_poll_seconds,
            heartbeat_seconds=settings.stream_heartbeat_seconds,
            max_streams=settings.stream_max_connections,
            max_per_team=settings.stream_max_per_team,
        )
        app.state.metrics_registry = CollectorRegistry(auto_describe=False)
        app.state.metrics_registry.register(ServiceCollector(app.state.db, app.state.stream_hub))
        gc.collect()
        freeze_long_lived()  # what the process has imported stays out of the collections requests trigger
        yield
        await app.state.stream_hub.close()
        app.state.model_cache.close()
        app.state.serving.traffic.close()
        app.state.db.dispose()

    app = FastAPI(
        title="Fine-tuning service",
        version="0.1.0",
        description="Upload a labelled dataset, fine-tune a pretrained model, watch it, serve it.",
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
        dependencies=[Depends(reject_unknown_query)],
    )
    install_error_handlers(app)
    app.add_middleware(
        RequestLimits, settings=settings, authenticate=check_key_before_body, recently_checked=known_predict_key
    )
    # /predict first: a request is matched against the routers in order, and each included router it passes costs
    # about 10-20 us of matching (the five ahead of it took 40-80 us of every /predict request).
    for router in (
        predict_router,
        datasets_router,
        jobs_router,
        sweeps_router,
        pools_router,
        models_router,
        predictions_router,
        usage_router,
        metrics_router,
    ):
        app.include_router(router)
    mount_console(app)  # the web console at /ui/ (static pages over the same API)
    document_problems(app)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    def readyz(request: Request) -> JSONResponse:
        try:
            with request.app.state.db.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:
            return problem(503, "Not ready", f"database: {exc.__class__.__name__}")
        return JSONResponse({"status": "ready"})

    app.add_middleware(RequestMetrics)  # inside the request ids: a request answered 500 there is counted as 500
    # Added last, so it is the outermost of the app's middleware: an error raised in any other one is answered too.
    app.add_middleware(RequestIdMiddleware)
    return app
