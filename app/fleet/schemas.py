"""What GET /pools answers."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class WorkerRead(BaseModel):
    name: str = Field(description="host:pid of the worker process")
    devices: int
    device_kind: str = Field(description="cuda or cpu (a CPU worker counts as one device)")
    running_job: bool
    heartbeat_at: datetime


class PoolRead(BaseModel):
    name: str
    max_devices_per_worker: int = Field(description="the most devices a job of this pool may ask for")
    workers: list[WorkerRead] = Field(description="workers alive now (heartbeat within the lease)")
    devices_total: int
    devices_busy: int = Field(description="devices the running jobs asked for")
    devices_free: int = Field(description="devices of idle workers: what a job can start on now")
