"""The real service for tests: migrated database, a uvicorn API and a Celery worker process, tiny models."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.factories import build_tiny_image_model, build_tiny_text_model

ROOT = Path(__file__).resolve().parent.parent
TERMINAL = {"succeeded", "failed", "cancelled"}


@dataclass
class Service:
    url: str
    env: dict[str, str]
    var_dir: Path
    models_dir: Path

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def new_key(self, team: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "app.cli", "keys", "create", "--team", team],
            env=self.env, cwd=ROOT, capture_output=True, text=True, check=True,
        )  # fmt: skip
        return out.stdout.strip().splitlines()[-1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the API exited with code {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError("the API did not become ready")


def stack_env(var_dir: Path, models_dir: Path) -> dict[str, str]:
    """Environment for the embedded default stack under `var_dir` (overridable for other stacks)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FINETUNE_")}
    env.update(
        FINETUNE_ENV="test",
        FINETUNE_VAR_DIR=str(var_dir),
        FINETUNE_MODELS_DIR=str(models_dir),
        FINETUNE_WORKER_THREADS="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("base-models")
    build_tiny_text_model(folder / "tiny-bert")
    build_tiny_image_model(folder / "tiny-vit")
    return folder


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Service]:
    """API (uvicorn) and one worker (celery, solo pool) as real processes on the embedded default."""
    var_dir = tmp_path_factory.mktemp("var")
    env = stack_env(var_dir, models_dir)
    subprocess.run([sys.executable, "-m", "app.cli", "migrate"], env=env, cwd=ROOT, check=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    logs = var_dir / "logs"
    logs.mkdir()
    api_log, worker_log = open(logs / "api.log", "wb"), open(logs / "worker.log", "wb")  # noqa: SIM115
    api = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--port", str(port)],
        env=env, cwd=ROOT, stdout=api_log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-P", "solo", "-Q", "training",
         "--loglevel", "INFO", "-n", "test@%h"],
        env=env, cwd=ROOT, stdout=worker_log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        _wait_ready(url, api)
        yield Service(url=url, env=env, var_dir=var_dir, models_dir=models_dir)
    finally:
        for proc in (api, worker):
            proc.terminate()
        for proc in (api, worker):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        api_log.close()
        worker_log.close()
        for name in ("api.log", "worker.log"):
            tail = (logs / name).read_text(errors="replace")[-3000:]
            print(f"\n----- {name} (tail) -----\n{tail}")


@pytest.fixture(scope="session")
def key(service: Service) -> str:
    return service.new_key("team-a")


@pytest.fixture(scope="session")
def other_key(service: Service) -> str:
    return service.new_key("team-b")


@pytest.fixture
def client(service: Service, key: str) -> Iterator[httpx.Client]:
    with service.client(key) as c:
        yield c


def wait_for_job(client: httpx.Client, job_id: str, statuses: set[str] = TERMINAL, timeout: float = 240) -> dict:
    """Poll GET /jobs/{id} until its status is in `statuses`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        time.sleep(0.3)
    raise TimeoutError(f"job {job_id} still {job['status']} after {timeout}s")
