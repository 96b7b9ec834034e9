"""GET /metrics: Prometheus text for operators (not in the OpenAPI document; no team's data in it)."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from app.errors import Unauthorized

router = APIRouter(include_in_schema=False)


def check_metrics_token(request: Request) -> None:
    """With FINETUNE_METRICS_TOKEN set, a scrape must send it as a bearer token; unset, /metrics is open."""
    token = request.app.state.settings.metrics_token
    if not token:
        return
    sent = request.headers.get("authorization", "")
    if not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
        raise Unauthorized("Send FINETUNE_METRICS_TOKEN as 'Authorization: Bearer <token>' (Prometheus: bearer_token).")


@router.get("/metrics")
def metrics(request: Request) -> Response:
    """This process's metrics, then what the database and the stream hub say at this moment."""
    check_metrics_token(request)
    body = generate_latest(REGISTRY) + generate_latest(request.app.state.metrics_registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
