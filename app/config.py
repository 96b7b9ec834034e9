"""Service configuration: one Settings object read from FINETUNE_* environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app import input_limits as caps

POOL_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,39}$"
DEFAULT_POOL = "default"  # the pool of jobs that name none and of workers started without --pool


class Settings(BaseSettings):
    """Everything that differs between the embedded default and a production stack."""

    model_config = SettingsConfigDict(env_prefix="FINETUNE_", env_file=".env", extra="ignore")

    env: Literal["dev", "test", "prod"] = Field("dev", description="prod refuses the embedded defaults")
    var_dir: Path = Field(Path("var"), description="Folder for the embedded SQLite files and artifacts")
    database_url: str = Field("", description="SQLAlchemy URL; empty: SQLite under var_dir")
    broker_url: str = Field("", description="Celery broker; empty: SQLAlchemy transport on SQLite")
    study_storage_url: str = Field(
        "",
        description="Optuna storage of the sweeps' studies; empty: beside the database (SQLite: a file of its own "
        "next to it; PostgreSQL: the same database, schema 'optuna')",
    )
    artifacts_url: str = Field(
        "", description="Artifact store: a folder or s3://bucket/prefix; empty: var_dir/artifacts"
    )
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, moto); credentials: AWS_*")
    models_dir: Path = Field(
        Path(), description="Folder of Hugging Face format base models; unset: var_dir/base-models"
    )
    model_cache_size: int = Field(4, ge=1, description="How many served models stay loaded at once")
    predict_max_batch: int = Field(64, ge=1, description="Most inputs one /predict forward pass merges")
    predict_max_wait_ms: float = Field(5, ge=0, description="How long a /predict batch waits for more requests")
    predict_workers: int = Field(
        1, ge=1, description="/predict forward passes that may run at once in one API process (all models share them)"
    )
    predict_threads: int | None = Field(
        None,
        ge=1,
        description="torch threads per /predict forward pass; default: all cores (1 where training shares them)",
    )
    predict_lookup_ttl_seconds: float = Field(
        1.0,
        ge=0,
        description="How long /predict trusts its in-process copy of a key, an alias's routes and a model's metadata: "
        "a revoked key or a moved alias takes effect within this on every API process (0: look up every request)",
    )
    batch_predict_max_rows: int = Field(1_000_000, ge=1, description="Most rows one batch prediction run scores")
    batch_predict_batch_size: int = Field(64, ge=1, le=4096, description="Rows per forward pass of a prediction run")
    max_upload_mb: int = Field(1024, ge=1, description="Largest dataset upload accepted")
    max_predict_mb: int = Field(32, ge=1, description="Largest /predict request body")
    max_json_kb: int = Field(1024, ge=1, description="Largest JSON body on every other route")
    team_max_active_jobs: int = Field(10, ge=1, description="jobs one team may have queued or running at once")
    team_max_storage_mb: int = Field(100_000, ge=1, description="datasets, models and checkpoints one team may store")
    job_memory_budget_mb: int = Field(
        8192,
        ge=1,
        description="Most memory one job's decoded dataset may take in a worker (images at their training size, "
        "token ids); a job over it is refused at submit, and a worker decodes per batch what would not fit",
    )
    max_text_chars: int = Field(
        caps.MAX_TEXT_CHARS, ge=1, description="Longest text (characters) in a dataset or a /predict request"
    )
    max_text_upload_mb: int = Field(
        caps.MAX_TEXT_UPLOAD_MB, ge=1, description="Largest CSV/JSONL upload (text datasets are parsed in memory)"
    )
    max_image_pixels: int = Field(
        caps.MAX_IMAGE_PIXELS, ge=1, description="Most pixels of one image (width x height), read before decoding"
    )
    max_image_mb: int = Field(caps.MAX_IMAGE_MB, ge=1, description="Largest image file in a dataset zip, unpacked")
    max_dataset_megapixels: int = Field(
        caps.MAX_DATASET_MEGAPIXELS, ge=1, description="Most pixels all images of one dataset upload hold together"
    )
    predict_max_inputs: int = Field(caps.PREDICT_MAX_INPUTS, ge=1, description="Most texts or images per /predict")
    predict_max_megapixels: int = Field(
        caps.PREDICT_MAX_MEGAPIXELS, ge=1, description="Most pixels all images of one /predict request hold together"
    )
    predict_max_chars: int = Field(
        caps.PREDICT_MAX_CHARS, ge=1, description="Most characters all texts of one /predict request hold together"
    )
    worker_threads: int | None = Field(None, ge=1, description="torch threads per worker; default: all cores")
    lease_seconds: float = Field(120, gt=0, description="a running job whose heartbeat is older is presumed lost")
    heartbeat_seconds: float = Field(10, gt=0, description="how often a worker renews its job's lease")
    max_restarts: int = Field(3, ge=0, description="lost-worker restarts before a job fails")
    requeue_after_seconds: float = Field(
        600, gt=0, description="re-send a queued job's message this long after the last send (lost broker messages)"
    )
    auth_failure_limit: int = Field(
        20, ge=1, description="failed authentications per client address and window before 429 (per API process)"
    )
    auth_failure_window_seconds: float = Field(60, gt=0, description="the sliding window of auth_failure_limit")
    stream_poll_seconds: float = Field(
        0.5, gt=0, le=60, description="how often an API process reads new rows for the jobs its live streams follow"
    )
    stream_heartbeat_seconds: float = Field(
        15, gt=0, le=300, description="a live stream quiet this long gets a heartbeat comment (keeps proxies open)"
    )
    stream_max_connections: int = Field(1000, ge=1, description="live streams one API process holds at once (503)")
    stream_max_per_team: int = Field(100, ge=1, description="live streams one team may hold per API process (429)")
    log_format: Literal["text", "json"] = Field(
        "text", description='"json": one JSON object per log line, with the request id (API and uvicorn logs)'
    )
    access_log: bool = Field(
        False,
        description="one log line per HTTP request (uvicorn's access log); off by default: GET /metrics counts requests "
        "by route and status, errors are logged with their request id, and the line costs /predict about 0.2 ms",
    )
    metrics_token: str | None = Field(
        None, description="if set, GET /metrics asks for it as a bearer token; unset, /metrics is open (no team data)"
    )
    reaper_interval_seconds: float = Field(15, gt=0, description="how often each worker looks for lost jobs")
    worker_pool: str = Field(
        DEFAULT_POOL, pattern=POOL_PATTERN, description="the pool this worker serves (`finetune worker --pool`)"
    )
    worker_gpus: int | None = Field(
        None, ge=1, le=64, description="devices this worker holds (`--gpus`); default: the visible GPUs, or 1 on CPU"
    )
    pools: str = Field(
        "",
        pattern=r"^([a-z0-9][a-z0-9_-]{0,39}:[0-9]{1,2})?(,[a-z0-9][a-z0-9_-]{0,39}:[0-9]{1,2})*$",
        description="pools the fleet has even while none of their workers runs, as name:devices-per-worker "
        "(`a100:8,cpu:1`); jobs may also ask for any pool a worker reported within FINETUNE_POOL_MEMORY_SECONDS",
    )
    pool_memory_seconds: float = Field(
        7 * 24 * 3600, gt=0, description="how long a pool a worker reported stays known after its last heartbeat"
    )
    fair_share_window_seconds: float = Field(
        24 * 3600, gt=0, description="the sliding window over which teams' device-seconds are compared"
    )
    team_max_running_jobs: int | None = Field(
        None, ge=1, description="jobs one team may run at once across the fleet; unset: no cap (see teams limits)"
    )
    test_oom_at_step: int | None = Field(
        None,
        ge=1,
        description="TEST ONLY (refused with FINETUNE_ENV=prod): each job this worker runs raises a CUDA out-of-memory "
        "error once, in the forward/backward passes of this optimizer step (the recovery's tests)",
    )
    test_oom_rank: int = Field(
        0,
        ge=0,
        description="TEST ONLY: which rank of a job on several devices raises FINETUNE_TEST_OOM_AT_STEP's error",
    )

    @model_validator(mode="after")
    def _resolve_defaults(self) -> Settings:
        self.var_dir = self.var_dir.resolve()
        if self.env == "prod" and (not self.database_url or not self.broker_url):
            raise ValueError(
                "FINETUNE_ENV=prod needs FINETUNE_DATABASE_URL and FINETUNE_BROKER_URL; "
                "the embedded SQLite defaults are for one machine only"
            )
        if not self.database_url:
            self.database_url = f"sqlite:///{self.var_dir / 'finetune.db'}"
        if not self.broker_url:
            self.broker_url = f"sqla+sqlite:///{self.var_dir / 'broker.db'}"
        if not self.artifacts_url:
            self.artifacts_url = str(self.var_dir / "artifacts")
        if self.env == "prod" and self.test_oom_at_step is not None:
            raise ValueError("FINETUNE_TEST_OOM_AT_STEP injects failures into jobs and is for tests only; unset it")
        if self.heartbeat_seconds * 2 > self.lease_seconds:
            raise ValueError("FINETUNE_LEASE_SECONDS must be at least twice FINETUNE_HEARTBEAT_SECONDS")
        if self.models_dir == Path():
            self.models_dir = self.var_dir / "base-models"
        return self


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
