"""HTTP for the fleet: which pools there are and what is alive in them."""

from __future__ import annotations

from fastapi import APIRouter

from app.deps import CurrentTeam, SessionDep, SettingsDep
from app.fleet import service
from app.fleet.schemas import PoolRead, WorkerRead

router = APIRouter(prefix="/pools", tags=["pools"])


@router.get("", response_model=list[PoolRead])
def list_pools(team: CurrentTeam, session: SessionDep, settings: SettingsDep) -> list[PoolRead]:
    """Pools (configured in FINETUNE_POOLS or reported by workers), their live workers, devices free and busy."""
    return [
        PoolRead(
            name=pool.name,
            max_devices_per_worker=pool.max_devices_per_worker,
            workers=[WorkerRead(**vars(w)) for w in pool.workers],
            devices_total=pool.devices_total,
            devices_busy=pool.devices_busy,
            devices_free=pool.devices_free,
        )
        for pool in service.list_pools(session, settings)
    ]
