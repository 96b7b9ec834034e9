"""Sweep specs in and sweep views out. The search space's structure is checked here; whether each name and bound
fits the job's hyperparameters is checked in app/sweeps/space.py, which names the field that does not."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.jobs.schemas import Hyperparameters

ParamName = Annotated[str, Field(min_length=1, max_length=40)]
ChoiceValue = str | int | float | bool | None
ALIAS_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class ParamSpace(BaseModel):
    """One hyperparameter's range: `log_uniform` and `uniform` (low, high; uniform may have a step), `int` (low,
    high, optional step, optional log) or `choice` (values)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    type: Literal["log_uniform", "uniform", "int", "choice"]
    low: float | None = None
    high: float | None = None
    step: float | None = Field(None, gt=0)
    log: bool = False
    values: list[ChoiceValue] | None = Field(None, min_length=1, max_length=100)


class Objective(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: Literal["val_accuracy", "val_loss", "val_macro_f1"] = "val_accuracy"
    direction: Literal["maximize", "minimize"] | None = Field(
        None, description="null: minimize val_loss, maximize the others"
    )

    @model_validator(mode="after")
    def _default_direction(self) -> Objective:
        if self.direction is None:
            self.direction = "minimize" if self.metric == "val_loss" else "maximize"
        return self


class PrunerSpec(BaseModel):
    """Which trials to stop early. `median`: stop a trial whose best value so far is worse than the median of
    completed trials at the same step; `asha` (successive halving) and `hyperband`: keep the best 1/reduction_factor
    at each rung."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["asha", "hyperband", "median", "none"] = "median"
    warmup_steps: int = Field(
        0,
        ge=0,
        le=10**9,
        description="median: no pruning before this step; asha/hyperband: the first rung "
        "(min_resource), 0: Optuna's auto",
    )
    startup_trials: int = Field(1, ge=0, le=1000, description="median: trials that must complete before pruning")
    reduction_factor: int = Field(3, ge=2, le=100, description="asha/hyperband: 1/N of the trials go on at a rung")


class Budget(BaseModel):
    """No new trial starts once the sweep's trials have taken this many optimizer steps in all, or this long since
    the sweep began; the trials already running finish."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    steps: int | None = Field(None, ge=1, le=10**12)
    seconds: float | None = Field(None, gt=0, le=10**8)


class SweepCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset_id: str = Field(min_length=1, max_length=64)
    base_model: str = Field(min_length=1, max_length=300)
    hyperparameters: Hyperparameters = Field(
        default_factory=Hyperparameters, description="fixed for every trial (as for a job)"
    )
    search_space: dict[ParamName, ParamSpace] = Field(
        min_length=1, max_length=20, description="hyperparameters the sampler chooses, by name"
    )
    objective: Objective = Field(default_factory=Objective)
    max_trials: int = Field(10, ge=1, le=1000)
    parallelism: int = Field(2, ge=1, le=100, description="trials queued or running at once")
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    pruner: PrunerSpec = Field(default_factory=PrunerSpec, description='an object, or just its type: "asha"')
    budget: Budget = Field(default_factory=Budget)
    seed: int = Field(42, ge=0, le=2**31 - 1, description="the same spec and seed proposes the same trials serially")
    promote_alias: str | None = Field(
        None, pattern=ALIAS_PATTERN, description="when the sweep ends, point this alias at the best trial's model"
    )

    @model_validator(mode="before")
    @classmethod
    def _pruner_by_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("pruner"), str):
            return {**data, "pruner": {"type": data["pruner"]}}
        return data


class BestTrial(BaseModel):
    number: int
    job_id: str | None
    model_id: str | None
    hyperparameters: dict[str, Any]
    objective: float


class BudgetUsed(BaseModel):
    steps: int
    steps_limit: int | None
    seconds: float
    seconds_limit: float | None


class SweepRead(BaseModel):
    id: str
    status: str
    dataset_id: str | None
    base_model: str
    spec: dict[str, Any]
    trials_started: int
    counts: dict[str, int] = Field(description="trials by state: queued, running, succeeded, pruned, failed, ...")
    best_trial: BestTrial | None
    budget_used: BudgetUsed
    stop_reason: str | None
    promoted_model_id: str | None
    created_at: datetime
    finished_at: datetime | None


class TrialRead(BaseModel):
    number: int
    job_id: str | None
    status: str = Field(description="the job's status; rejected: the service refused the trial's spec (see error)")
    hyperparameters: dict[str, Any]
    objective: float | None = Field(description="the value told to the study (a pruned trial's: its last report)")
    told: str | None = Field(description="what the study was told: complete, pruned or fail; null while it runs")
    steps: int
    model_id: str | None
    error: str | None
    created_at: datetime


class Importances(BaseModel):
    completed_trials: int
    importances: dict[str, float] = Field(description="fANOVA importance of each searched hyperparameter, summing to 1")
