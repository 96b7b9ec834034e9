"""Model and alias views."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.inference.runtimes import Runtime
from app.registry.routes import TOTAL_WEIGHT
from app.registry.tables import Alias, AliasTraffic


class ModelRead(BaseModel):
    model_config = ConfigDict(from_attributes=True, protected_namespaces=())

    id: str
    name: str
    task: str
    base_model: str
    job_id: str | None
    labels: list[str]
    metrics: dict[str, Any]
    below_baseline: bool
    runtimes: dict[str, Any] = Field(
        default_factory=dict,
        description="the runtimes this model was converted to (when an alias first asked for one), each with the "
        "test accuracy of the converted model beside the torch model's on the same rows of its dataset's test split",
    )
    created_at: datetime

    @field_validator("runtimes", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return value or {}


class ImprovementRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: Literal["macro_f1", "accuracy"] = Field(
        "macro_f1", description="the test-split score the new model must beat (strictly)"
    )


class Route(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_id: str = Field(min_length=1, max_length=64)
    weight: int = Field(ge=0, le=TOTAL_WEIGHT, description="percent of the alias's requests")


class AliasSet(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_id: str | None = Field(None, min_length=1, max_length=64, description="the model taking all the traffic")
    routes: list[Route] | None = Field(
        None,
        min_length=1,
        max_length=10,
        description="instead of model_id, a split by weight (percentages adding up to 100), e.g. a canary "
        '[{"model_id": A, "weight": 90}, {"model_id": B, "weight": 10}]. A request with a `routing_key` always '
        "lands on the same model while the weights stay (list the stable model first: raising the canary's "
        "weight then moves keys only towards it); without one, each request is drawn at random",
    )
    shadow_model_id: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="a model that answers a copy of every request: its answers are compared with the served ones "
        "(GET /aliases/{name}/stats) and never returned. Omit it to remove the shadow",
    )
    runtime: Runtime = Field(
        "torch",
        description="how the alias's models run: 'torch' (fp32, as trained), 'onnx' (exported once, served by ONNX "
        "Runtime on the CPU; needs the `onnx` extra) or 'int8' (Linear layers quantized to int8, for transformer "
        "models). The first move to a runtime converts each model and records its test accuracy beside the torch "
        "model's (GET /models/{id} `runtimes`); a model that cannot be converted is a 422 and the alias stays as it was",
    )
    force: bool = Field(False, description="point the alias at a model flagged below_baseline all the same")
    require_improvement: ImprovementRule | None = Field(
        None,
        description="move the alias only if the model beats the alias's current one on this metric, both measured "
        "on the test split of the same dataset: otherwise 409 with both scores (`current`, `candidate`), and 422 "
        "when they were evaluated on different datasets. An alias that does not exist yet is simply created",
    )

    @model_validator(mode="after")
    def one_target(self) -> AliasSet:
        if (self.model_id is None) == (self.routes is None):
            raise ValueError("send either 'model_id' or 'routes' (a split by weight), not both and not neither")
        if self.routes is not None:
            ids = [r.model_id for r in self.routes]
            if len(set(ids)) != len(ids):
                raise ValueError("each model appears once in 'routes'; add up its weights instead")
            total = sum(r.weight for r in self.routes)
            if total != TOTAL_WEIGHT:
                raise ValueError(f"the routes' weights add up to {total}; they are percentages and must add up to 100")
            if self.require_improvement is not None:
                raise ValueError("require_improvement gates a move to one model_id; send it without 'routes'")
        return self

    def weighted(self) -> list[tuple[str, int]]:
        """(model id, weight) pairs: one model at 100, or the split."""
        if self.routes is None:
            assert self.model_id is not None
            return [(self.model_id, TOTAL_WEIGHT)]
        return [(r.model_id, r.weight) for r in self.routes]


class AliasRead(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    name: str
    model_id: str = Field(description="the model taking the most traffic")
    routes: list[Route]
    shadow_model_id: str | None
    runtime: str = Field(description="how its models run: torch, onnx or int8")
    updated_at: datetime

    @classmethod
    def of(cls, alias: Alias) -> AliasRead:
        routes = [Route(model_id=m, weight=w) for m, w in alias.weighted_routes()]
        return cls(
            name=alias.name,
            model_id=alias.model_id,
            routes=routes,
            shadow_model_id=alias.shadow_model_id,
            runtime=alias.runtime or "torch",
            updated_at=alias.updated_at,
        )


class ModelTraffic(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_id: str
    role: Literal["route", "shadow"] = Field(description="served the alias's answers, or answered a copy (shadow)")
    requests: int
    inputs: int
    errors: int
    mean_latency_ms: float | None = Field(description="from a request's arrival to its answer (shadow: its forward)")
    compared: int = Field(description="shadow: inputs whose top label was compared with the served model's")
    agreed: int
    agreement: float | None = Field(description="shadow: agreed / compared")

    @classmethod
    def of(cls, row: AliasTraffic) -> ModelTraffic:
        answered = row.requests - row.errors
        return cls(
            model_id=row.model_id,
            role="shadow" if row.role == "shadow" else "route",
            requests=row.requests,
            inputs=row.inputs,
            errors=row.errors,
            mean_latency_ms=round(row.latency_ms_total / answered, 3) if answered else None,
            compared=row.compared,
            agreed=row.agreed,
            agreement=round(row.agreed / row.compared, 4) if row.compared else None,
        )


class AliasStats(BaseModel):
    alias: AliasRead
    models: list[ModelTraffic]
