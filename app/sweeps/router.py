"""HTTP for sweeps: start one, watch it and its trials, read what mattered, cancel it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from app.deps import NEEDS_TRAIN, CurrentTeam, ResourceId, SendJob, SessionDep, SettingsDep, StoreDep
from app.pagination import Page, Paging
from app.sweeps import service
from app.sweeps.schemas import Importances, SweepCreate, SweepRead, TrialRead
from app.sweeps.tables import Sweep

router = APIRouter(prefix="/sweeps", tags=["sweeps"])


def valid_sweep(sweep_id: ResourceId, team: CurrentTeam, session: SessionDep) -> Sweep:
    return service.get_sweep(session, team.id, sweep_id)


ValidSweep = Annotated[Sweep, Depends(valid_sweep)]


@router.post("", status_code=201, response_model=SweepRead, dependencies=[NEEDS_TRAIN])
def create_sweep(
    spec: SweepCreate, team: CurrentTeam, session: SessionDep, send: SendJob, settings: SettingsDep, store: StoreDep
) -> SweepRead:
    """Start a hyperparameter sweep: its first `parallelism` trials are queued as jobs at once, the rest as
    earlier ones end."""
    sweep = service.create_sweep(session, send, settings, store, team, spec)
    return service.view(session, sweep)


@router.get("", response_model=Page[SweepRead])
def list_sweeps(team: CurrentTeam, session: SessionDep, page: Paging) -> Page:
    items, next_cursor = service.list_sweeps(session, team.id, page)
    return Page(items=[service.view(session, sweep) for sweep in items], next_cursor=next_cursor)


@router.get("/{sweep_id}", response_model=SweepRead)
def read_sweep(sweep: ValidSweep, session: SessionDep) -> SweepRead:
    return service.view(session, sweep)


@router.get("/{sweep_id}/trials", response_model=list[TrialRead])
def read_trials(sweep: ValidSweep, session: SessionDep) -> list[TrialRead]:
    return service.list_trials(session, sweep)


@router.get("/{sweep_id}/importances", response_model=Importances)
def read_importances(sweep: ValidSweep, session: SessionDep, settings: SettingsDep) -> Importances:
    """How much each searched hyperparameter mattered to the objective (fANOVA); 409 until 3 trials completed."""
    return service.importances(session, settings, sweep)


@router.post("/{sweep_id}/cancel", response_model=SweepRead, dependencies=[NEEDS_TRAIN])
def cancel_sweep(sweep: ValidSweep, session: SessionDep, settings: SettingsDep) -> SweepRead:
    """Start no more trials; cancel the queued ones at once and the running ones at their next step."""
    return service.view(session, service.cancel_sweep(session, settings, sweep))
