"""The two stacks the suite runs on: the embedded default, and PostgreSQL + Redis + S3 (moto) on loopback."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

STACK = os.environ.get("FINETUNE_TEST_STACK", "embedded")
PG_ADMIN_URL = os.environ.get("FINETUNE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("FINETUNE_TEST_REDIS", "redis://127.0.0.1:6379/15")


@dataclass
class Stack:
    name: str
    env: dict[str, str] = field(default_factory=dict)  # FINETUNE_* and AWS_* overrides for every process


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def production_services_up() -> bool:
    return reachable("127.0.0.1", 5432) and reachable("127.0.0.1", 6379)


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database; dropped afterwards."""
    import psycopg

    name = f"finetune_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def flush_redis(url: str) -> None:
    import redis

    redis.Redis.from_url(url).flushdb()


@contextmanager
def s3_server() -> Iterator[dict[str, str]]:
    """A real S3 API (moto's server mode) on loopback, with one bucket; yields the env that points at it."""
    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "FINETUNE_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "FINETUNE_ARTIFACTS_URL": "s3://finetune-test/artifacts",
    }
    boto3.client(
        "s3", endpoint_url=env["FINETUNE_S3_ENDPOINT_URL"], aws_access_key_id="testing",
        aws_secret_access_key="testing", region_name="us-east-1",
    ).create_bucket(Bucket="finetune-test")  # fmt: skip
    # The test process reads the same store as the services it starts.
    os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
    try:
        yield env
    finally:
        server.stop()


@contextmanager
def production_stack(redis_url: str = REDIS_URL) -> Iterator[Stack]:
    """PostgreSQL (a fresh database), Redis (one flushed database number) and moto S3."""
    flush_redis(redis_url)
    with postgres_database() as database_url, s3_server() as s3_env:
        yield Stack("production", {"FINETUNE_DATABASE_URL": database_url, "FINETUNE_BROKER_URL": redis_url, **s3_env})
    flush_redis(redis_url)


@contextmanager
def make_stack(name: str = STACK) -> Iterator[Stack]:
    if name == "embedded":
        yield Stack("embedded")
    elif name == "production":
        with production_stack() as stack:
            yield stack
    else:
        raise ValueError(f"FINETUNE_TEST_STACK must be embedded or production, not {name!r}")


def process_env(var_dir: Path, models_dir: Path, stack: Stack) -> dict[str, str]:
    """Environment for API, worker and CLI processes of one test stack."""
    from app.processes import service_env

    settings = {
        "FINETUNE_ENV": "test",
        "FINETUNE_VAR_DIR": str(var_dir),
        "FINETUNE_MODELS_DIR": str(models_dir),
        "FINETUNE_WORKER_THREADS": "1",
        # live streams: a heartbeat a test can wait for, and a team limit it can reach (tests/test_stream.py)
        "FINETUNE_STREAM_HEARTBEAT_SECONDS": "1",
        "FINETUNE_STREAM_MAX_PER_TEAM": "6",
    }
    return service_env({**settings, **stack.env})


@contextmanager
def private_stack(redis_db: int) -> Iterator[Stack]:
    """A stack of the kind under test that no other service of the run shares (own database, own queue)."""
    if STACK == "production":
        with production_stack(f"redis://127.0.0.1:6379/{redis_db}") as stack:
            yield stack
    else:
        yield Stack("embedded")


if __name__ == "__main__":
    # `python -m tests.stacks`: exit 0 when PostgreSQL and Redis answer on loopback (the Makefile asks).
    raise SystemExit(0 if production_services_up() else 1)
