"""The shape of every error answer (RFC 9457 problem+json) as the OpenAPI document states it, so clients and the
schema fuzzer (tests/test_fuzz.py) know what a 4xx or 5xx carries."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

PROBLEM = "application/problem+json"


class FieldError(BaseModel):
    field: str = Field(description="where in the request, dotted (query.limit, hyperparameters.epochs)")
    message: str
    type: str


class Problem(BaseModel):
    """An error: `detail` says what to fix; 422s list each invalid field in `errors`; a 500 carries `request_id`."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = None
    request_id: str | None = Field(None, description="the X-Request-ID under which the failure was logged")


def _response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}}}


# Every operation may answer these (they also replace FastAPI's default 422, which is not what this API sends).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": _response("A problem the client can fix: 401 key, 404 not found, 409 conflict, 413 too large, 422 invalid"),
    "5XX": _response("500 an unexpected error (logged with the request id), 503 a dependency is unavailable"),
}


def document_problems(app: FastAPI) -> None:
    """Add the Problem schema to the app's OpenAPI components (the responses refer to it)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            definitions = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(definitions.pop("$defs", {}))
            components["Problem"] = definitions
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
