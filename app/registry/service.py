"""Registered models and aliases; every query scoped to a team."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.artifacts.store import ArtifactStore
from app.db import utcnow
from app.errors import Conflict, NotFound
from app.jobs.tables import ACTIVE_STATUSES, TrainingJob
from app.pagination import PageParams, newest_first
from app.registry import promotion
from app.registry.promotion import Metric
from app.registry.tables import Alias, RegisteredModel

DEFAULT_ALIAS = "production"


def get_model(session: Session, team_id: str, model_id: str) -> RegisteredModel:
    model = session.scalar(
        select(RegisteredModel).where(RegisteredModel.id == model_id, RegisteredModel.team_id == team_id)
    )
    if model is None:
        raise NotFound(f"No model '{model_id}'. List yours with GET /models.")
    return model


def list_models(session: Session, team_id: str, page: PageParams) -> tuple[list[RegisteredModel], str | None]:
    """Newest first, cursor-paged."""
    anchor = get_model(session, team_id, page.cursor) if page.cursor else None
    query = select(RegisteredModel).where(RegisteredModel.team_id == team_id)
    return newest_first(session, query, RegisteredModel, anchor, page.limit)


def set_alias(
    session: Session,
    team_id: str,
    name: str,
    model_id: str,
    force: bool = False,
    require_improvement: Metric | None = None,
) -> Alias:
    """Point alias `name` at one of the team's models (created or moved); a model that learned nothing needs `force`;
    with `require_improvement` an existing alias moves only to a model that scores better (app/registry/promotion.py)."""
    model = get_model(session, team_id, model_id)
    if model.below_baseline and not force:
        accuracy = model.metrics.get("test_accuracy")
        majority = model.metrics.get("majority_class_accuracy")
        raise Conflict(
            f"Model '{model_id}' never beat the majority class on validation (test accuracy {accuracy}, always "
            f"predicting the most common label: {majority}); it has learned nothing useful. Retrain it (more data, "
            f"more epochs, another base model), or send \"force\": true to point '{name}' at it anyway."
        )
    alias = session.get(Alias, (team_id, name))
    if alias is not None and require_improvement is not None and alias.model_id != model_id:
        current = get_model(session, team_id, alias.model_id)
        promotion.require_improvement(session, name, current, model, require_improvement)
    if alias is None:
        alias = Alias(team_id=team_id, name=name, model_id=model_id)
        session.add(alias)
    else:
        alias.model_id, alias.updated_at = model_id, utcnow()
    session.flush()
    return alias


def list_aliases(session: Session, team_id: str) -> list[Alias]:
    return list(session.scalars(select(Alias).where(Alias.team_id == team_id).order_by(Alias.name)))


def resolve_model(session: Session, team_id: str, ref: str | None) -> RegisteredModel:
    """A model id or an alias name (default: production) to the team's model."""
    ref = ref or DEFAULT_ALIAS
    alias = session.get(Alias, (team_id, ref))
    if alias is not None:
        return get_model(session, team_id, alias.model_id)
    model = session.scalar(select(RegisteredModel).where(RegisteredModel.id == ref, RegisteredModel.team_id == team_id))
    if model is None:
        hint = (
            f"No alias '{DEFAULT_ALIAS}' is set: point it at a model (PUT /aliases/{DEFAULT_ALIAS}) or pass 'model'."
            if ref == DEFAULT_ALIAS
            else "Pass a model id from GET /models or an alias from GET /aliases."
        )
        raise NotFound(f"No model or alias '{ref}'. {hint}")
    return model


def register_model(
    session: Session,
    *,
    model_id: str,
    team_id: str,
    job_id: str,
    name: str,
    task: str,
    base_model: str,
    labels: list[str],
    metrics: dict,
    storage_key: str,
    below_baseline: bool = False,
    size_bytes: int | None = None,
) -> RegisteredModel:
    """Record a fine-tuned model whose files are already in the store."""
    model = RegisteredModel(
        id=model_id,
        team_id=team_id,
        job_id=job_id,
        name=name,
        task=task,
        base_model=base_model,
        labels=labels,
        metrics=metrics,
        storage_key=storage_key,
        below_baseline=below_baseline,
        size_bytes=size_bytes,
    )
    session.add(model)
    session.flush()
    return model


def delete_model(session: Session, store: ArtifactStore, team_id: str, model_id: str) -> None:
    """Remove the model's row and files, unless an alias routes to it or an unfinished job trains from it."""
    model = get_model(session, team_id, model_id)
    aliases = sorted(session.scalars(select(Alias.name).where(Alias.team_id == team_id, Alias.model_id == model_id)))
    if aliases:
        names = ", ".join(f"'{a}'" for a in aliases)
        raise Conflict(
            f"Model '{model_id}' is served by alias {names}; point the alias at another model "
            "(PUT /aliases/{name}) before deleting this one."
        )
    training = session.scalar(
        select(TrainingJob.id).where(
            TrainingJob.team_id == team_id,
            TrainingJob.base_model == model_id,
            TrainingJob.status.in_(ACTIVE_STATUSES),
        )
    )
    if training:
        raise Conflict(f"Job '{training}' trains from model '{model_id}'; wait for it to finish or cancel it first.")
    session.delete(model)
    session.flush()
    store.delete_prefix(model.storage_key)
