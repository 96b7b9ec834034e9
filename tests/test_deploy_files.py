"""docker-compose.yml and Dockerfile kept in step with the code (no Docker engine runs here)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from app.cli import cli
from app.config import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()
OUR_SERVICES = ("migrate", "api", "worker")


def _cli_commands() -> set[str]:
    import typer.main

    return set(typer.main.get_command(cli).commands)


def test_compose_runs_commands_that_exist():
    commands = _cli_commands()
    for name in OUR_SERVICES:
        command = COMPOSE["services"][name]["command"]
        assert command[0] == "finetune", name
        assert command[1] in commands, f"{name}: 'finetune {command[1]}' does not exist"
        help_run = subprocess.run([sys.executable, "-m", "app.cli", *command[1:2], "--help"], capture_output=True)
        assert help_run.returncode == 0, help_run.stderr


def test_compose_environment_is_what_the_settings_read():
    fields = set(Settings.model_fields)
    for name in OUR_SERVICES:
        env = COMPOSE["services"][name]["environment"]
        finetune_vars = {k for k in env if k.startswith("FINETUNE_")}
        assert {"FINETUNE_DATABASE_URL", "FINETUNE_BROKER_URL", "FINETUNE_ARTIFACTS_URL"} <= finetune_vars
        for var in finetune_vars:
            assert var[len("FINETUNE_") :].lower() in fields, f"{name}: {var} is not a setting"
        settings = Settings(**{k[len("FINETUNE_") :].lower(): v for k, v in env.items() if k.startswith("FINETUNE_")})
        assert settings.database_url.startswith("postgresql+psycopg://")
        assert settings.broker_url.startswith("redis://")


def test_compose_shape():
    services = COMPOSE["services"]
    assert {"postgres", "redis", "migrate", "api", "worker"} <= set(services)
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert "container_name" not in services["worker"], "a fixed name would stop --scale worker=N"
    assert services["migrate"]["restart"] == "no"
    assert services["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    for name in ("postgres", "redis", "api", "minio"):
        assert "healthcheck" in services[name], name
    for name in ("postgres", "redis", "api", "worker"):
        assert services[name]["restart"] == "unless-stopped", name


def test_dockerfile_is_multi_stage_non_root_with_pinned_cuda_torch():
    assert len(re.findall(r"^FROM ", DOCKERFILE, re.M)) >= 2
    user = re.findall(r"^USER (\S+)", DOCKERFILE, re.M)
    assert user and user[-1] not in ("root", "0")
    makefile_pins = re.search(r"^TORCH_PINS := (.+)$", (ROOT / "Makefile").read_text(), re.M).group(1).split()
    assert all(pin in DOCKERFILE for pin in makefile_pins)
    final_stage = DOCKERFILE.rsplit("\nFROM ", 1)[1]
    assert "apt-get install" not in final_stage and "build-essential" not in final_stage
    cmd = re.search(r'^CMD \["finetune", "(\w+)"', DOCKERFILE, re.M).group(1)
    assert cmd in _cli_commands()
    for copied in re.findall(r"^COPY (?!--from)(\S+)", DOCKERFILE, re.M):
        assert (ROOT / copied).exists(), copied
