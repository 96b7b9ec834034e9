"""Registered models and aliases; every query scoped to a team."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.artifacts.store import ArtifactStore
from app.db import utcnow
from app.errors import Conflict, NotFound
from app.jobs.tables import ACTIVE_STATUSES, TrainingJob
from app.pagination import PageParams, newest_first
from app.registry import promotion
from app.registry.promotion import Metric
from app.registry.routes import TOTAL_WEIGHT, Routes, ServedModel
from app.registry.tables import Alias, AliasTraffic, RegisteredModel

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
    routes: list[tuple[str, int]],
    shadow_model_id: str | None = None,
    force: bool = False,
    require_improvement: Metric | None = None,
    before_move: Callable[[list[RegisteredModel]], None] | None = None,
    runtime: str = "torch",
) -> Alias:
    """Point alias `name` at one of the team's models, or split it by weight between several (created or moved), with
    an optional shadow; a model that learned nothing needs `force`; with `require_improvement` an existing alias moves
    only to a model that scores better (app/registry/promotion.py); its models run in `runtime`. `before_move(models)`
    runs once every check has passed and before anything is written (the API converts, loads and warms the models
    there; if it raises, nothing moves)."""
    models = [get_model(session, team_id, model_id) for model_id, _ in routes]
    shadow = get_model(session, team_id, shadow_model_id) if shadow_model_id else None
    for model in models:
        _check_learned(model, name, force)
    alias = session.get(Alias, (team_id, name))
    model_id = max(routes, key=lambda route: route[1])[0]
    if alias is not None and require_improvement is not None and alias.model_id != model_id:
        current = get_model(session, team_id, alias.model_id)
        promotion.require_improvement(session, name, current, models[0], require_improvement)
    if before_move is not None:
        before_move(models + ([shadow] if shadow else []))
    split = [{"model_id": m, "weight": w} for m, w in routes] if len(routes) > 1 else None
    if alias is None:
        alias = Alias(
            team_id=team_id,
            name=name,
            model_id=model_id,
            routes=split,
            shadow_model_id=shadow_model_id,
            runtime=runtime,
        )
        session.add(alias)
    else:
        alias.model_id, alias.routes, alias.shadow_model_id = model_id, split, shadow_model_id
        alias.runtime = runtime
        alias.updated_at = utcnow()
    session.flush()
    return alias


def _check_learned(model: RegisteredModel, name: str, force: bool) -> None:
    if model.below_baseline and not force:
        accuracy = model.metrics.get("test_accuracy")
        majority = model.metrics.get("majority_class_accuracy")
        raise Conflict(
            f"Model '{model.id}' never beat the majority class on validation (test accuracy {accuracy}, always "
            f"predicting the most common label: {majority}); it has learned nothing useful. Retrain it (more data, "
            f"more epochs, another base model), or send \"force\": true to point '{name}' at it anyway."
        )


def get_alias(session: Session, team_id: str, name: str) -> Alias:
    alias = session.get(Alias, (team_id, name))
    if alias is None:
        raise NotFound(f"No alias '{name}'. List yours with GET /aliases.")
    return alias


def alias_traffic(session: Session, team_id: str, name: str) -> tuple[Alias, list[AliasTraffic]]:
    """The alias and its traffic counters, per model and role (routes first, then shadows)."""
    alias = get_alias(session, team_id, name)
    rows = session.scalars(
        select(AliasTraffic)
        .where(AliasTraffic.team_id == team_id, AliasTraffic.alias == name)
        .order_by(AliasTraffic.role, AliasTraffic.model_id)
    )
    return alias, list(rows)


def list_aliases(session: Session, team_id: str) -> list[Alias]:
    return list(session.scalars(select(Alias).where(Alias.team_id == team_id).order_by(Alias.name)))


def resolve_routes(session: Session, team_id: str, ref: str | None) -> Routes:
    """A model id or an alias name (default: production) to the models serving it, in the alias's runtime (a model
    id: torch): 404 as resolve_model."""
    ref = ref or DEFAULT_ALIAS
    alias = session.get(Alias, (team_id, ref))
    if alias is None:
        model = resolve_model(session, team_id, ref)
        return Routes(None, ((_served(model), TOTAL_WEIGHT),))
    weighted = alias.weighted_routes()
    wanted = [m for m, _ in weighted] + ([alias.shadow_model_id] if alias.shadow_model_id else [])
    found = {
        m.id: _served(m)
        for m in session.scalars(
            select(RegisteredModel).where(RegisteredModel.team_id == team_id, RegisteredModel.id.in_(wanted))
        )
    }
    found = {m: replace(served, runtime=alias.runtime) for m, served in found.items()}
    routes = tuple((found[m], w) for m, w in weighted if m in found and w > 0)
    if not routes:
        raise NotFound(f"Alias '{ref}' routes to no model that still exists; point it at one (PUT /aliases/{ref}).")
    shadow = found.get(alias.shadow_model_id) if alias.shadow_model_id else None
    return Routes(ref, routes, shadow)


def _served(model: RegisteredModel) -> ServedModel:
    return ServedModel(model.id, model.task, model.storage_key)


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
    aliases = sorted(
        a.name
        for a in session.scalars(select(Alias).where(Alias.team_id == team_id))
        if model_id in {m for m, _ in a.weighted_routes()} or a.shadow_model_id == model_id
    )
    if aliases:
        names = ", ".join(f"'{a}'" for a in aliases)
        raise Conflict(
            f"Model '{model_id}' is served (or shadowed) by alias {names}; point the alias at another model "
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
