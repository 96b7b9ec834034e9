"""`finetune datasets|jobs|models|aliases|predict|configure`: the CLI over the client (never the database).

Every command takes `--json` (one JSON document; `jobs watch --json` and `jobs create --watch --json` write one
JSON object per line). Exit codes: 0 done, 1 the service refused or could not be reached (its problem detail is
printed), 2 bad usage, 3 a watched job failed or was cancelled.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from finetune_client import display
from finetune_client.client import Client
from finetune_client.config import DEFAULT_URL, config_path, read_config_file, write_config_file
from finetune_client.errors import ApiError, FinetuneError, NotFound
from finetune_client.types import Job

JOB_NOT_SUCCEEDED = 3
JSON = typer.Option(False, "--json", help="print JSON for scripts instead of tables")
datasets = typer.Typer(help="Upload and inspect datasets.", no_args_is_help=True)
jobs = typer.Typer(help="Submit, watch and read fine-tuning jobs.", no_args_is_help=True)
models = typer.Typer(help="Fine-tuned models.", no_args_is_help=True)
aliases = typer.Typer(help="Aliases that route /predict to a model.", no_args_is_help=True)


def register(cli: typer.Typer) -> None:
    """Add the client commands to the `finetune` app."""
    cli.add_typer(datasets, name="datasets")
    cli.add_typer(jobs, name="jobs")
    cli.add_typer(models, name="models")
    cli.add_typer(aliases, name="aliases")
    cli.command("predict")(predict)
    cli.command("configure")(configure)


@contextmanager
def connect() -> Iterator[Client]:
    """A client from the environment or config file; the service's errors end the command with their detail."""
    try:
        with Client() as client:
            yield client
    except ApiError as exc:
        fields = "".join(f"\n  {e.get('field')}: {e.get('message')}" for e in exc.errors)
        display.console(stderr=True).print(f"error: {exc.status} {exc.title}: {exc.detail}{fields}", markup=False)
        raise typer.Exit(1) from None
    except FinetuneError as exc:
        display.console(stderr=True).print(f"error: {exc}", markup=False)
        raise typer.Exit(1) from None


# --- configure -----------------------------------------------------------------------------------------------


def configure(
    url: str = typer.Option(None, "--url", help=f"the service's address (default {DEFAULT_URL})"),
    api_key: str = typer.Option(None, "--api-key", help="an API key (asked for when not given)"),
    check: bool = typer.Option(True, "--check/--no-check", help="try the key before saving it"),
) -> None:
    """Save the URL and API key to the config file (FINETUNE_CONFIG, default ~/.config/finetune/config.toml)."""
    current = read_config_file()
    url = url or typer.prompt("URL", default=current.get("url", DEFAULT_URL))
    api_key = api_key or typer.prompt("API key", hide_input=True)
    if check:
        try:
            with Client(url, api_key) as client:
                team = client.usage().team
        except FinetuneError as exc:
            display.console(stderr=True).print(f"error: not saved: {exc}", markup=False)
            raise typer.Exit(1) from None
        typer.echo(f"the key works: team {team}")
    typer.echo(f"saved to {write_config_file(url, api_key, config_path())}")


# --- datasets ------------------------------------------------------------------------------------------------

TASKS_BY_SUFFIX = {".zip": "image_classification", ".csv": "text_classification", ".jsonl": "text_classification"}


@datasets.command("upload")
def datasets_upload(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="a zip of class folders, or a CSV/JSONL")],
    task: str | None = typer.Option(
        None, help="image_classification or text_classification (default: from the extension)"
    ),
    name: str = typer.Option(None, help="a name to show (default: the file name)"),
    text_column: str = typer.Option(None, help="the text column of a CSV/JSONL (default: text)"),
    label_column: str = typer.Option(None, help="the label column (default: label)"),
    as_json: bool = JSON,
) -> None:
    """Upload a dataset and show its classes per split and any warnings."""
    task = task or TASKS_BY_SUFFIX.get(file.suffix.lower())
    if not task:
        raise typer.BadParameter("cannot tell the task from the extension; pass --task", param_hint="--task")
    with connect() as client:
        dataset = client.datasets.upload(file, task, name=name, text_column=text_column, label_column=label_column)
    if as_json:
        return display.print_json(dataset)
    display.show_dataset(display.console(), dataset)


@datasets.command("list")
def datasets_list(limit: int = typer.Option(50, min=1, help="the newest N"), as_json: bool = JSON) -> None:
    """The team's datasets, newest first."""
    with connect() as client:
        items = client.datasets.list(limit=limit)
    if as_json:
        return display.print_json(items)
    display.console().print(display.datasets_table(items))


@datasets.command("show")
def datasets_show(dataset_id: str, as_json: bool = JSON) -> None:
    """One dataset: its classes per split and any warnings."""
    with connect() as client:
        dataset = client.datasets.get(dataset_id)
    if as_json:
        return display.print_json(dataset)
    display.show_dataset(display.console(), dataset)


# --- jobs ----------------------------------------------------------------------------------------------------


def parse_hyperparameters(pairs: list[str], as_json: str | None) -> dict[str, Any]:
    """`--hyperparameters '{...}'` overlaid with each `--hp name=value` (a JSON value, else a string)."""
    hp: dict[str, Any] = {}
    if as_json:
        try:
            hp = json.loads(as_json)
        except ValueError as exc:
            raise typer.BadParameter(f"not JSON: {exc}", param_hint="--hyperparameters") from None
        if not isinstance(hp, dict):
            raise typer.BadParameter("give a JSON object", param_hint="--hyperparameters")
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"{pair!r}: write name=value", param_hint="--hp")
        try:
            hp[name.strip()] = json.loads(value)
        except ValueError:
            hp[name.strip()] = value
    return hp


@jobs.command("create")
def jobs_create(
    dataset_id: str = typer.Option(..., "--dataset", "-d", help="the dataset's id"),
    base_model: str = typer.Option(..., "--base-model", "-m", help="a base model folder, a model id or a hub id"),
    hp: Annotated[list[str] | None, typer.Option("--hp", help="a hyperparameter, name=value (repeatable)")] = None,
    hyperparameters: str = typer.Option(None, help="hyperparameters as a JSON object (--hp overrides)"),
    watch: bool = typer.Option(False, "--watch", "-w", help="then follow it as `jobs watch` does"),
    as_json: bool = JSON,
) -> None:
    """Submit a fine-tuning job (every hyperparameter not given has a default that adapts to the data)."""
    spec = parse_hyperparameters(hp or [], hyperparameters)
    with connect() as client:
        job = client.jobs.create(dataset_id, base_model, spec)
        if as_json:
            display.print_json(job)
        else:
            typer.echo(f"job {job.id} {job.status}")
        if watch:
            follow(client, job.id, as_json)


@jobs.command("list")
def jobs_list(
    status: str = typer.Option(None, help="only queued, running, succeeded, failed or cancelled jobs"),
    limit: int = typer.Option(20, min=1, help="the newest N"),
    as_json: bool = JSON,
) -> None:
    """The team's jobs, newest first."""
    with connect() as client:
        items = client.jobs.list(status, limit=limit)
    if as_json:
        return display.print_json(items)
    display.console().print(display.jobs_table(items))


@jobs.command("show")
def jobs_show(job_id: str, as_json: bool = JSON) -> None:
    """One job: status, progress, best metric, timings, the hyperparameters as used."""
    with connect() as client:
        job = client.jobs.get(job_id)
    if as_json:
        return display.print_json(job)
    display.show_job(display.console(), job)


@jobs.command("watch")
def jobs_watch(job_id: str, as_json: bool = JSON) -> None:
    """Follow a job live (step/total, epoch, loss, ETA) until it finishes, then show the report's summary.
    Exits 3 when the job failed or was cancelled."""
    with connect() as client:
        follow(client, job_id, as_json)


def follow(client: Client, job_id: str, as_json: bool) -> Job:
    """Watch until the job finishes; the outcome is shown and a job that did not succeed exits 3."""
    out = display.console()
    with display.JobView(out, as_json) as view:
        job = client.jobs.wait(job_id, on_progress=view.update)
    report, lines = None, []
    if job.status == "succeeded":
        try:
            report = client.jobs.report(job_id)
        except NotFound:
            report = None
    else:
        lines = [f"{e.kind}: {e.message}" for e in client.jobs.events(job_id)][-8:]
    view.finished(job, report, lines)
    if job.status != "succeeded":
        raise typer.Exit(JOB_NOT_SUCCEEDED)
    return job


@jobs.command("cancel")
def jobs_cancel(job_id: str, as_json: bool = JSON) -> None:
    """Cancel a job: at once if queued, at its next step if running."""
    with connect() as client:
        job = client.jobs.cancel(job_id)
    if as_json:
        return display.print_json(job)
    state = "cancel requested" if job.status == "running" else job.status
    typer.echo(f"job {job.id}: {state}")


@jobs.command("report")
def jobs_report(job_id: str, as_json: bool = JSON) -> None:
    """The evaluation on the test split: accuracy and macro-F1 beside the baselines, per class, confusion matrix."""
    with connect() as client:
        report = client.jobs.report(job_id)
    if as_json:
        return display.print_json(report)
    display.show_report(display.console(), report)


# --- models, aliases, predict --------------------------------------------------------------------------------


@models.command("list")
def models_list(limit: int = typer.Option(50, min=1, help="the newest N"), as_json: bool = JSON) -> None:
    """The team's models with their test metrics and the aliases that route to them."""
    with connect() as client:
        items = client.models.list(limit=limit)
        routes = client.aliases.list()
    if as_json:
        return display.print_json(items)
    by_model: dict[str, list[str]] = {}
    for alias in routes:
        by_model.setdefault(alias.model_id, []).append(alias.name)
    display.console().print(display.models_table(items, by_model))


@aliases.command("set")
def aliases_set(
    name: str = typer.Argument(..., help="the alias, e.g. production (what /predict uses by default)"),
    model_id: str = typer.Argument(..., help="the model it should route to"),
    force: bool = typer.Option(False, "--force", help="even to a model flagged below_baseline"),
    as_json: bool = JSON,
) -> None:
    """Point an alias at a model (says which model it replaces)."""
    with connect() as client:
        before = {a.name: a.model_id for a in client.aliases.list()}.get(name)
        alias = client.aliases.set(name, model_id, force=force)
    if as_json:
        return display.print_json(alias)
    replaced = f" (was {before})" if before and before != alias.model_id else ""
    typer.echo(f"alias {alias.name} -> {alias.model_id}{replaced}")


@aliases.command("list")
def aliases_list(as_json: bool = JSON) -> None:
    """The team's aliases."""
    with connect() as client:
        items = client.aliases.list()
    if as_json:
        return display.print_json(items)
    out = display.table("ALIAS", "MODEL", "UPDATED")
    for a in items:
        out.add_row(a.name, a.model_id, f"{display.age(a.updated_at)} ago")
    display.console().print(out)


def predict(
    texts: Annotated[list[str] | None, typer.Argument(help="texts to classify")] = None,
    image: Annotated[
        list[Path] | None, typer.Option("--image", "-i", exists=True, dir_okay=False, help="an image (repeatable)")
    ] = None,
    model: str = typer.Option(None, "--model", help="a model id or alias (default: the alias production)"),
    top_k: int = typer.Option(1, "--top-k", min=1, help="labels per input"),
    as_json: bool = JSON,
) -> None:
    """Classify texts (arguments) or images (--image)."""
    if bool(texts) == bool(image):
        raise typer.BadParameter("give texts or --image files (one kind)")
    with connect() as client:
        if texts:
            result = client.predict(texts, model=model, top_k=top_k)
        else:
            result = client.predict(images=image or [], model=model, top_k=top_k)
    if as_json:
        return display.print_json(result)
    inputs = list(texts) if texts else [str(p) for p in image or []]
    display.console().print(display.predictions_table(inputs, result))
