"""Restarting this machine's real PostgreSQL and Redis servers, with the commands that started them."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from tests.stacks import reachable

REDIS_START = [
    "redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379", "--save", "",
    "--appendonly", "no", "--dir", "/var/lib/redis", "--logfile", "/var/log/redis/ci.log",
]  # fmt: skip


def _pg_version() -> str:
    return sorted(p.name for p in Path("/etc/postgresql").iterdir())[-1]


def _wait(port: int, up: bool, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while reachable("127.0.0.1", port) != up:
        if time.monotonic() > deadline:
            raise TimeoutError(f"port {port} still {'down' if up else 'up'}")
        time.sleep(0.2)


def stop_redis() -> None:
    """Shut Redis down without saving: every queued message is gone, as after a crash."""
    subprocess.run(["redis-cli", "-p", "6379", "shutdown", "nosave"], check=False, capture_output=True)
    _wait(6379, up=False)


def start_redis() -> None:
    if not reachable("127.0.0.1", 6379):
        subprocess.run(REDIS_START, check=True)
    _wait(6379, up=True)


def pg_ctl(action: str) -> None:
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", _pg_version(), "main", action], check=True, capture_output=True
    )


def stop_postgres() -> None:
    pg_ctl("stop")
    _wait(5432, up=False)


def start_postgres() -> None:
    if not reachable("127.0.0.1", 5432):
        pg_ctl("start")
    _wait(5432, up=True)
    for _ in range(100):  # accepting TCP is not yet accepting queries
        if subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1"]).returncode == 0:
            return
        time.sleep(0.2)
