"""The Optuna side of a sweep: where its study lives, the sampler and pruner a spec names, asking for a trial,
reporting evaluations and telling the end.

The studies live in Optuna's RDB storage on the service's own database server, so every worker and the API share
them: PostgreSQL keeps them in the schema `optuna` of the same database, SQLite in a file of its own beside the
database. Either way Optuna's tables (and its own `alembic_version`) stay apart from ours and from our migrations.
`finetune migrate` creates the storage (`prepare_storage`)."""

from __future__ import annotations

import logging
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.pruners import BasePruner, HyperbandPruner, MedianPruner, NopPruner, SuccessiveHalvingPruner
from optuna.samplers import BaseSampler, GridSampler, RandomSampler, TPESampler
from optuna.storages import RDBStorage
from optuna.trial import TrialState
from sqlalchemy import create_engine, make_url, text

from app.config import Settings
from app.sweeps import space
from app.sweeps.schemas import PrunerSpec, SweepCreate

SCHEMA = "optuna"
TOLD = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "fail": TrialState.FAIL}
optuna.logging.set_verbosity(optuna.logging.WARNING)
log = logging.getLogger(__name__)


def storage_url(settings: Settings) -> str:
    """FINETUNE_STUDY_STORAGE_URL, or beside the database: SQLite `finetune.db` -> `finetune-studies.db`."""
    if settings.study_storage_url:
        return settings.study_storage_url
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and url.database:
        path = Path(url.database)
        return str(url.set(database=str(path.with_name(f"{path.stem}-studies{path.suffix or '.db'}"))))
    if url.get_backend_name() == "postgresql":
        return settings.database_url
    raise ValueError("set FINETUNE_STUDY_STORAGE_URL: sweeps keep their studies on SQLite or PostgreSQL")


def _engine_kwargs(url: str) -> dict[str, Any]:
    if make_url(url).get_backend_name() == "postgresql":
        return {"pool_pre_ping": True, "connect_args": {"options": f"-csearch_path={SCHEMA}"}}
    return {"connect_args": {"timeout": 30}}


def prepare_storage(settings: Settings) -> None:
    """Create the studies' storage (schema or file, Optuna's tables); quick and harmless when it exists."""
    url = storage_url(settings)
    engine = create_engine(url)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
        elif engine.dialect.name == "sqlite":
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")  # persistent: API and workers write at once
    engine.dispose()
    RDBStorage(url, engine_kwargs=_engine_kwargs(url)).engine.dispose()


@lru_cache(maxsize=4)
def _storage(url: str) -> RDBStorage:
    """One storage (engine) per process and URL, built on first use."""
    return RDBStorage(url, engine_kwargs=_engine_kwargs(url), skip_table_creation=True)


def storage(settings: Settings) -> RDBStorage:
    return _storage(storage_url(settings))


def create_study(settings: Settings, name: str, spec: SweepCreate) -> None:
    optuna.create_study(storage=storage(settings), study_name=name, direction=spec.objective.direction)


def delete_study(settings: Settings, name: str) -> None:
    try:
        optuna.delete_study(study_name=name, storage=storage(settings))
    except KeyError:
        pass


def load_study(settings: Settings, name: str, spec: SweepCreate | None = None) -> optuna.Study:
    """The study with the spec's pruner (a plain RandomSampler stands in where no trial is asked for)."""
    pruner = make_pruner(spec.pruner) if spec else NopPruner()
    return optuna.load_study(study_name=name, storage=storage(settings), sampler=RandomSampler(), pruner=pruner)


def make_sampler(spec: SweepCreate, trials_so_far: int) -> BaseSampler:
    """The spec's sampler, seeded with the sweep's seed plus the number of trials asked so far: built afresh for
    every ask (in whichever process asks), it proposes the same sequence for the same history."""
    if spec.sampler == "grid":  # its seed shuffles the grid, and trial number N takes point N: one order for all
        return GridSampler(space.grid(spec), seed=spec.seed)
    seed = spec.seed + trials_so_far
    if spec.sampler == "random":
        return RandomSampler(seed=seed)
    startup = min(10, max(2, spec.max_trials // 4))  # Optuna's 10 random trials would be all of a small sweep
    return TPESampler(seed=seed, n_startup_trials=startup, constant_liar=spec.parallelism > 1)


def make_pruner(pruner: PrunerSpec) -> BasePruner:
    min_resource: int | str = pruner.warmup_steps or "auto"
    if pruner.type == "median":
        return MedianPruner(n_startup_trials=pruner.startup_trials, n_warmup_steps=pruner.warmup_steps)
    if pruner.type == "asha":
        return SuccessiveHalvingPruner(min_resource=min_resource, reduction_factor=pruner.reduction_factor)
    if pruner.type == "hyperband":
        return HyperbandPruner(min_resource=pruner.warmup_steps or 1, reduction_factor=pruner.reduction_factor)
    return NopPruner()


def ask(settings: Settings, name: str, spec: SweepCreate) -> tuple[int, int, dict[str, Any]]:
    """A new trial of the study: (its number, its storage id, the hyperparameters the sampler chose)."""
    study = load_study(settings, name)
    study.sampler = make_sampler(spec, len(study.get_trials(deepcopy=False)))
    trial = study.ask(space.distributions(spec))
    return trial.number, trial._trial_id, dict(trial.params)


def tell(settings: Settings, name: str, number: int, told: str, value: float | None) -> None:
    """The trial's end, once: a trial the study already holds as finished is left as it is (when another process
    tells it at the same moment, the storage's row lock lets one through and refuses the other)."""
    study = load_study(settings, name)
    values = value if told == "complete" else None
    try:
        study.tell(number, values, state=TOLD[told], skip_if_finished=True)
    except UpdateFinishedTrialError:
        pass


def importances(settings: Settings, name: str, seed: int) -> tuple[int, dict[str, float]]:
    """(completed trials, fANOVA importance of each searched hyperparameter)."""
    study = load_study(settings, name)
    completed = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    values = {t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    if len(values) < 2:
        raise NoVariance(f"all {completed} completed trials scored {values.pop() if values else None}")
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    found = optuna.importance.get_param_importances(study, evaluator=evaluator)
    return completed, {k: float(v) for k, v in found.items()}


class NoVariance(ValueError):
    """The completed trials all scored the same: no hyperparameter explains a difference."""


class TrialReporter:
    """A running trial job's link to its Optuna trial: reports each evaluation and asks the pruner."""

    def __init__(self, settings: Settings, study_name: str, trial_id: int, spec: SweepCreate) -> None:
        self.metric = spec.objective.metric
        self.pruner = spec.pruner.type
        self.trial = optuna.trial.Trial(load_study(settings, study_name, spec), trial_id)

    def report(self, step: int, values: dict[str, float]) -> str | None:
        """Report the objective at `step`; the reason to stop if the pruner says so, else None."""
        value = values.get(self.metric)
        if value is None or math.isnan(value):
            return None
        self.trial.report(value, step)  # a resumed attempt's repeat of a reported step is ignored
        if not self.trial.should_prune():
            return None
        return (
            f"pruned at step {step} by the {self.pruner} pruner: {self.metric} {value:.4f} is behind the other trials"
        )
