"""Evaluation-gated promotion: an alias moves to a model only if it scores better than the alias's current model on
the test split of the same dataset (both models' reports were computed on it when their jobs finished)."""

from __future__ import annotations

from typing import Literal

from sqlalchemy.orm import Session

from app.errors import Conflict, InvalidInput
from app.jobs.tables import TrainingJob
from app.registry.tables import RegisteredModel

Metric = Literal["macro_f1", "accuracy"]


def require_improvement(
    session: Session, name: str, current: RegisteredModel, new: RegisteredModel, metric: Metric
) -> None:
    """Raise 409 (both scores in the body) unless `new` beats `current` on `metric`; 422 when the scores are not
    comparable (other datasets, or a model whose evaluation data is unknown)."""
    current_data, new_data = _evaluated_on(session, name, current), _evaluated_on(session, name, new)
    if current_data != new_data:
        raise InvalidInput(
            f"the models were evaluated on different datasets: '{current.id}' (alias '{name}' now) on the test split "
            f"of dataset '{current_data[0]}', '{new.id}' on dataset '{new_data[0]}' (splits: {current_data[1]}, "
            f"{new_data[1]}). Scores on different test sets do not compare: train the new model on dataset "
            f"'{current_data[0]}', or move the alias without require_improvement"
        )
    key = f"test_{metric}"
    current_score, new_score = current.metrics.get(key), new.metrics.get(key)
    if not isinstance(current_score, int | float) or not isinstance(new_score, int | float):
        raise InvalidInput(f"the models' reports do not both hold {key}; move the alias without require_improvement")
    if new_score <= current_score:
        raise Conflict(
            f"model '{new.id}' does not beat alias '{name}'s current model '{current.id}' on {metric}: "
            f"{new_score:.4f} against {current_score:.4f} on the test split of dataset '{current_data[0]}'. "
            "The alias was not moved; send the request without require_improvement to move it anyway",
            extra={
                "metric": metric,
                "dataset_id": current_data[0],
                "current": {"model_id": current.id, "score": current_score},
                "candidate": {"model_id": new.id, "score": new_score},
            },
        )


def _evaluated_on(session: Session, name: str, model: RegisteredModel) -> tuple[str, str]:
    """(dataset id, split) of the model's test report; 422 when its job or dataset no longer exists."""
    job = session.get(TrainingJob, model.job_id) if model.job_id else None
    if job is None or job.dataset_id is None or model.team_id != job.team_id:
        raise InvalidInput(
            f"model '{model.id}' cannot be compared: the job or dataset it was evaluated on is gone, so its "
            f"test scores cannot be matched with another model's. Move alias '{name}' without "
            "require_improvement, or compare the models yourself"
        )
    split = (job.report or {}).get("split", "test")
    return job.dataset_id, str(split)
