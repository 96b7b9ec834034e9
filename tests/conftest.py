"""The real service for tests: migrated database, a uvicorn API and a Celery worker process, tiny models."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from app import processes
from app.artifacts.store import ArtifactStore
from app.config import Settings
from app.db import Database
from app.migrate import upgrade
from app.processes import ROOT, api_command, worker_command
from tests.factories import build_tiny_image_model, build_tiny_text_model, build_tiny_timm_model
from tests.stacks import Stack, make_stack, postgres_database, process_env

TERMINAL = {"succeeded", "failed", "cancelled", "pruned"}


@dataclass
class Service:
    url: str
    env: dict[str, str]
    var_dir: Path
    models_dir: Path
    stack: Stack
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, name: str, command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start a process of the service (its output goes to var/logs/NAME.log), with `env` added to the service's."""
        log = self.var_dir / "logs" / f"{name}.log"
        self.processes[name] = processes.start(command, {**self.env, **(env or {})}, log)
        return self.processes[name]

    def start_worker(self, name: str, pool: str = "default", gpus: int | None = None) -> subprocess.Popen:
        """A worker of `pool` holding `gpus` devices (as `finetune worker --pool POOL --gpus N` starts it)."""
        env = {"FINETUNE_WORKER_POOL": pool, **({"FINETUNE_WORKER_GPUS": str(gpus)} if gpus else {})}
        return self.start(name, worker_command(name, pool), env)

    @property
    def settings(self) -> Settings:
        return Settings(**{k[len("FINETUNE_") :].lower(): v for k, v in self.env.items() if k.startswith("FINETUNE_")})

    def store(self) -> ArtifactStore:
        """The artifact store the service writes to, seen from the test process."""
        return ArtifactStore.from_settings(self.settings)

    def stored_keys(self, prefix: str) -> set[str]:
        store = self.store()
        root = store.path(prefix)
        return {p for p in store.fs.find(root)} if store.fs.exists(root) else set()

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def new_key(self, team: str) -> str:
        return processes.create_key(self.env, team)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The production pass (FINETUNE_TEST_STACK=production, after the embedded one in `make test`) runs what its stack
    changes: tests on the `stack` fixture (the service, its workers, its store) and those marked production
    (PostgreSQL used directly). The rest do not touch the stack and ran, identically, in the embedded pass;
    FINETUNE_TEST_ALL=1 runs them again."""
    if os.environ.get("FINETUNE_TEST_STACK") != "production" or os.environ.get("FINETUNE_TEST_ALL"):
        return
    keep = [
        item for item in items if "stack" in getattr(item, "fixturenames", ()) or item.get_closest_marker("production")
    ]
    dropped = [item for item in items if item not in keep]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("base-models")
    build_tiny_text_model(folder / "tiny-bert")
    build_tiny_image_model(folder / "tiny-vit")
    build_tiny_timm_model(folder / "tiny-timm")
    return folder


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.production)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A freshly migrated database of each kind, used directly (no API, no worker)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'direct.db'}"
        upgrade(url)
        yield Database(url)
        return
    with postgres_database() as url:
        upgrade(url)
        database = Database(url)
        yield database
        database.dispose()


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    """The stack this run tests (FINETUNE_TEST_STACK: embedded by default, or production)."""
    with make_stack() as s:
        # The test process reads the same store as the service (S3 credentials come from AWS_* variables).
        os.environ.update({k: v for k, v in s.env.items() if k.startswith("AWS_")})
        yield s


@contextmanager
def running_service(
    var_dir: Path,
    models_dir: Path,
    stack: Stack,
    workers: int = 1,
    settings: dict[str, str] | None = None,
    pools: dict[str, str] | None = None,
) -> Iterator[Service]:
    """Migrate, then run the API (uvicorn) and `workers` Celery workers (solo pool) as real processes; `pools`
    names further workers and their pools ({"worker-x": "x"})."""
    env = {**process_env(var_dir, models_dir, stack), **(settings or {})}
    subprocess.run(processes.cli_command("migrate"), env=env, cwd=ROOT, check=True)
    port = processes.free_port()
    service = Service(url=f"http://127.0.0.1:{port}", env=env, var_dir=var_dir, models_dir=models_dir, stack=stack)
    api = service.start("api", api_command("127.0.0.1", port))
    for n in range(workers):
        service.start_worker(f"worker{n}")
    for name, pool in (pools or {}).items():
        service.start_worker(name, pool)
    try:
        processes.wait_ready(service.url, api, timeout=180)  # a loaded machine imports torch slowly
        yield service
    finally:
        processes.stop(service.processes.values())
        for name in service.processes:
            tail = (var_dir / "logs" / f"{name}.log").read_text(errors="replace")[-3000:]
            print(f"\n----- {name}.log (tail) -----\n{tail}")


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory, models_dir: Path, stack: Stack) -> Iterator[Service]:
    """The service on the stack under test, with one worker."""
    with running_service(tmp_path_factory.mktemp("var"), models_dir, stack) as running:
        yield running


@pytest.fixture(scope="session")
def key(service: Service) -> str:
    return service.new_key("team-a")


@pytest.fixture(scope="session")
def other_key(service: Service) -> str:
    return service.new_key("team-b")


@pytest.fixture(scope="module")
def text_dataset(service: Service, key: str) -> str:
    """A small text dataset of team A's (tests/factories.py text_csv), uploaded once per test module."""
    from tests.factories import text_csv

    with service.client(key) as client:
        answer = client.post("/datasets", files={"file": ("r.csv", text_csv())}, data={"task": "text_classification"})
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


@pytest.fixture(scope="module")
def cli_env(service: Service, key: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of the `finetune` client commands: the service's URL and team A's key; no config file."""
    return {
        "FINETUNE_URL": service.url,
        "FINETUNE_API_KEY": key,
        "FINETUNE_CONFIG": str(tmp_path_factory.mktemp("cli") / "absent.toml"),
        "COLUMNS": "200",
    }


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


def wait_for_step(client: httpx.Client, job_id: str, step: int, timeout: float = 240) -> dict:
    """Poll GET /jobs/{id} until the running job has reached `step` (it must not finish before)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        assert job["status"] in ("queued", "running"), job
        if job["step"] >= step:
            return job
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} did not reach step {step}")
