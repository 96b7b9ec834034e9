"""create_app(): routers, problem+json error handlers, and the per-process resources in app.state."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

import app.all_tables  # noqa: F401  (every table known to this process)
from app.artifacts.store import ArtifactStore
from app.config import Settings, get_settings
from app.datasets.router import router as datasets_router
from app.db import Database, is_connection_error
from app.deps import check_key_before_body
from app.errors import AppError
from app.inference.cache import ModelCache
from app.inference.router import router as predict_router
from app.jobs.router import router as jobs_router
from app.queue import make_celery
from app.quotas.router import router as usage_router
from app.registry.router import router as models_router
from app.request_limits import RequestLimits
from app.teams.throttle import FailedAuthThrottle

PROBLEM = "application/problem+json"
log = logging.getLogger(__name__)


def problem(
    status: int, title: str, detail: str, headers: dict[str, str] | None = None, **extra: object
) -> JSONResponse:
    """An RFC 9457 problem response."""
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def _field_errors(errors: Sequence[Any]) -> list[dict]:
    return [
        {"field": ".".join(str(p) for p in e["loc"] if p != "body"), "message": e["msg"], "type": e["type"]}
        for e in errors
    ]


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def app_error(_: Request, exc: AppError) -> JSONResponse:
        return problem(exc.status, exc.title, exc.detail, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    @app.exception_handler(ValidationError)
    async def validation_error(_: Request, exc: RequestValidationError | ValidationError) -> JSONResponse:
        errors = _field_errors(exc.errors())
        detail = "; ".join(f"{e['field'] or 'body'}: {e['message']}" for e in errors)
        return problem(422, "Invalid request", detail, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail), str(exc.detail))

    @app.exception_handler(DBAPIError)
    async def database_error(_: Request, exc: DBAPIError) -> JSONResponse:
        if is_connection_error(exc):
            return problem(503, "Database unavailable", "The database is unreachable right now; retry shortly.")
        log.error("database error: %s", exc)
        return problem(500, "Internal error", "The request failed on a database error; it was logged.")


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API application for `settings` (default: from the environment)."""
    settings = settings or get_settings()

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
        yield
        app.state.model_cache.close()
        app.state.db.dispose()

    app = FastAPI(
        title="Fine-tuning service",
        version="0.1.0",
        description="Upload a labelled dataset, fine-tune a pretrained model, watch it, serve it.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_middleware(RequestLimits, settings=settings, authenticate=check_key_before_body)
    for router in (datasets_router, jobs_router, models_router, predict_router, usage_router):
        app.include_router(router)

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

    return app
