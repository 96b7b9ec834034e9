"""The service's processes on one machine: the commands that start them, their environment, waiting until the API
answers, stopping them. `finetune up` uses these, and so do the demo, the benchmarks and the tests, which run the
service as real processes the way a user does."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import httpx

from app.config import DEFAULT_POOL
from app.queue import queue_for

ROOT = Path(__file__).resolve().parent.parent
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def worker_command(name: str = "worker", pool: str = DEFAULT_POOL) -> list[str]:
    """One worker process consuming its pool's queue: the solo pool keeps CUDA out of forked children; it runs one
    job at a time (on as many of its devices as the job asks for). Its pool and devices come from
    FINETUNE_WORKER_POOL and FINETUNE_WORKER_GPUS (`finetune worker --pool --gpus` sets them)."""
    return [
        sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
        "-P", "solo", "-Q", queue_for(pool), "--loglevel", "INFO", "-n", f"{name}@%h",
    ]  # fmt: skip


def worker_identity(pid: int) -> str:
    """How a worker process names itself in a job's `worker` column (host and pid)."""
    return f"{socket.gethostname()}:{pid}"


def api_command(host: str, port: int) -> list[str]:
    """The API; on SIGTERM, requests still open after 10 s (live streams never end on their own) are cancelled, and
    their clients reconnect elsewhere with Last-Event-ID."""
    return [
        sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--host", host, "--port", str(port),
        "--timeout-graceful-shutdown", "10",
    ]  # fmt: skip


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "app.cli", *args]


def service_env(settings: Mapping[str, str], base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (default: this process's environment) without its FINETUNE_* variables, plus `settings`, offline."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("FINETUNE_")}
    env.update(OFFLINE, PYTHONUNBUFFERED="1")
    env.update(settings)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(command: list[str], env: Mapping[str, str], log_path: Path, new_session: bool = False) -> subprocess.Popen:
    """Start one process of the service from the repository root, its output appended to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            command, env=dict(env), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=new_session
        )


def wait_ready(url: str, proc: subprocess.Popen, path: str = "/readyz", timeout: float = 120) -> None:
    """Until `url + path` answers below 500; raises if `proc` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited with code {proc.returncode}")
        try:
            if httpx.get(f"{url}{path}", timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not become ready in {timeout:.0f} s")


def stop(procs: Iterable[subprocess.Popen], timeout: float = 20) -> None:
    """SIGTERM each (workers hand their jobs back), then SIGKILL whatever has not exited after `timeout` seconds."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def create_key(env: Mapping[str, str], team: str) -> str:
    """A new API key for `team` from `finetune keys create` (creating the team if needed)."""
    out = subprocess.run(
        cli_command("keys", "create", "--team", team),
        env=dict(env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]
