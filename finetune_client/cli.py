"""`finetune datasets|jobs|sweeps|models|aliases|predict|configure`: the CLI over the client (never the database).

Every command takes `--json` (one JSON document; `jobs watch --json` and `jobs create --watch --json` write one
JSON object per line, as do `sweeps watch --json` and `sweeps create --watch --json`). Exit codes: 0 done, 1 the
service refused or could not be reached (its problem detail is printed), 2 bad usage, 3 a watched job or sweep
failed or was cancelled.
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
from finetune_client.types import Job, PredictionRun, Sweep

JOB_NOT_SUCCEEDED = 3
JSON = typer.Option(False, "--json", help="print JSON for scripts instead of tables")
datasets = typer.Typer(help="Upload and inspect datasets.", no_args_is_help=True)
jobs = typer.Typer(help="Submit, watch and read fine-tuning jobs.", no_args_is_help=True)
sweeps = typer.Typer(help="Hyperparameter sweeps: many trials (jobs) searching a space.", no_args_is_help=True)
models = typer.Typer(help="Fine-tuned models.", no_args_is_help=True)
aliases = typer.Typer(help="Aliases that route /predict to a model.", no_args_is_help=True)
predictions = typer.Typer(help="Batch prediction: score a whole dataset on a worker.", no_args_is_help=True)


def register(cli: typer.Typer) -> None:
    """Add the client commands to the `finetune` app."""
    cli.add_typer(datasets, name="datasets")
    cli.add_typer(jobs, name="jobs")
    cli.add_typer(sweeps, name="sweeps")
    cli.add_typer(models, name="models")
    cli.add_typer(aliases, name="aliases")
    cli.add_typer(predictions, name="predictions")
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
    priority: str = typer.Option(None, "--priority", help="low, normal or high: orders your team's own jobs"),
    pool: str = typer.Option(None, "--pool", help="the pool of workers to run on (see GET /pools)"),
    gpus: int = typer.Option(None, "--gpus", min=1, help="devices of one worker it needs"),
    watch: bool = typer.Option(False, "--watch", "-w", help="then follow it as `jobs watch` does"),
    as_json: bool = JSON,
) -> None:
    """Submit a fine-tuning job (every hyperparameter not given has a default that adapts to the data)."""
    spec = parse_hyperparameters(hp or [], hyperparameters)
    with connect() as client:
        job = client.jobs.create(dataset_id, base_model, spec, priority=priority, pool=pool, gpus=gpus)
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
def jobs_report(
    job_id: str,
    checkpoint: str = typer.Option(None, "--checkpoint", help="another checkpoint's (an id or a step); waits for it"),
    as_json: bool = JSON,
) -> None:
    """The evaluation on the test split: accuracy and macro-F1 beside the baselines, per class, confusion matrix,
    calibration, the most-confused pairs and the most confident mistakes."""
    with connect() as client:
        report = client.jobs.report(job_id, checkpoint)
    if as_json:
        return display.print_json(report)
    display.show_report(display.console(), report)


# --- sweeps --------------------------------------------------------------------------------------------------


def parse_json_option(value: str | None, hint: str) -> dict[str, Any] | None:
    """A JSON object given inline or as @path (a file holding it); None when not given."""
    if value is None:
        return None
    text = value
    if value.startswith("@"):
        try:
            text = Path(value[1:]).read_text()
        except OSError as exc:
            raise typer.BadParameter(f"cannot read {value[1:]}: {exc.strerror}", param_hint=hint) from None
    try:
        parsed = json.loads(text)
    except ValueError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint=hint) from None
    if not isinstance(parsed, dict):
        raise typer.BadParameter("give a JSON object", param_hint=hint)
    return parsed


@sweeps.command("create")
def sweeps_create(
    dataset_id: str = typer.Option(..., "--dataset", "-d", help="the dataset's id"),
    base_model: str = typer.Option(..., "--base-model", "-m", help="a base model folder, a model id or a hub id"),
    search_space: str = typer.Option(
        ..., "--space", help='the search space as JSON, or @file: {"learning_rate": {"type": "log_uniform", ...}}'
    ),
    hp: Annotated[
        list[str] | None, typer.Option("--hp", help="a fixed hyperparameter, name=value (repeatable)")
    ] = None,
    hyperparameters: str = typer.Option(None, help="fixed hyperparameters as a JSON object (--hp overrides)"),
    objective: str = typer.Option(None, help="val_accuracy, val_loss or val_macro_f1 (default val_accuracy)"),
    direction: str = typer.Option(None, help="maximize or minimize (default: minimize val_loss, maximize others)"),
    max_trials: int = typer.Option(None, "--max-trials", min=1, help="trials in all (default 10)"),
    parallelism: int = typer.Option(None, min=1, help="trials queued or running at once (default 2)"),
    sampler: str = typer.Option(None, help="tpe, random or grid (default tpe)"),
    pruner: str = typer.Option(None, help="median, asha, hyperband or none, or a JSON object (default median)"),
    budget_steps: int = typer.Option(None, "--budget-steps", min=1, help="start no trial past this many steps"),
    budget_seconds: float = typer.Option(None, "--budget-seconds", min=0, help="start no trial past this time"),
    seed: int = typer.Option(None, help="the same spec and seed proposes the same trials (default 42)"),
    promote_alias: str = typer.Option(None, "--promote", help="at the end, point this alias at the best model"),
    watch: bool = typer.Option(False, "--watch", "-w", help="then follow it as `sweeps watch` does"),
    as_json: bool = JSON,
) -> None:
    """Start a hyperparameter sweep: each trial is a job with hyperparameters drawn from --space."""
    space = parse_json_option(search_space, "--space") or {}
    fixed = parse_hyperparameters(hp or [], hyperparameters)
    goal = {k: v for k, v in {"metric": objective, "direction": direction}.items() if v is not None} or None
    budget = {k: v for k, v in {"steps": budget_steps, "seconds": budget_seconds}.items() if v is not None} or None
    pruner_spec: dict[str, Any] | str | None = pruner
    if pruner and pruner.lstrip().startswith(("{", "@")):
        pruner_spec = parse_json_option(pruner, "--pruner")
    with connect() as client:
        sweep = client.sweeps.create(
            dataset_id, base_model, space, fixed, objective=goal, max_trials=max_trials, parallelism=parallelism,
            sampler=sampler, pruner=pruner_spec, budget=budget, seed=seed, promote_alias=promote_alias,
        )  # fmt: skip
        if as_json:
            display.print_json(sweep)
        else:
            typer.echo(f"sweep {sweep.id} {sweep.status}: {sweep.trials_started} trials started")
        if watch:
            follow_sweep(client, sweep.id, as_json)


@sweeps.command("list")
def sweeps_list(limit: int = typer.Option(20, min=1, help="the newest N"), as_json: bool = JSON) -> None:
    """The team's sweeps, newest first."""
    with connect() as client:
        items = client.sweeps.list(limit=limit)
    if as_json:
        return display.print_json(items)
    display.console().print(display.sweeps_table(items))


@sweeps.command("show")
def sweeps_show(sweep_id: str, as_json: bool = JSON) -> None:
    """One sweep: status, trials by state, budget used, the best trial so far."""
    with connect() as client:
        sweep = client.sweeps.get(sweep_id)
    if as_json:
        return display.print_json(sweep)
    display.show_sweep(display.console(), sweep)


@sweeps.command("trials")
def sweeps_trials(sweep_id: str, as_json: bool = JSON) -> None:
    """The sweep's trials: state, objective, steps and hyperparameters of each (* marks the best)."""
    with connect() as client:
        sweep = client.sweeps.get(sweep_id)
        items = client.sweeps.trials(sweep_id)
    if as_json:
        return display.print_json(items)
    display.console().print(display.trials_table(sweep, items))


@sweeps.command("cancel")
def sweeps_cancel(sweep_id: str, as_json: bool = JSON) -> None:
    """Cancel a sweep: no more trials; queued ones at once, running ones at their next step."""
    with connect() as client:
        sweep = client.sweeps.cancel(sweep_id)
    if as_json:
        return display.print_json(sweep)
    typer.echo(f"sweep {sweep.id}: {sweep.status} ({display.counts_text(sweep)})")


@sweeps.command("watch")
def sweeps_watch(
    sweep_id: str,
    interval: float = typer.Option(2.0, "--interval", min=0.1, help="seconds between looks"),
    as_json: bool = JSON,
) -> None:
    """Follow a sweep (trials by state, the best so far, steps used) until it ends, then show its trials and the
    best trial's hyperparameters. Exits 3 when the sweep failed or was cancelled."""
    with connect() as client:
        follow_sweep(client, sweep_id, as_json, interval)


def follow_sweep(client: Client, sweep_id: str, as_json: bool, interval: float = 2.0) -> Sweep:
    """Watch until the sweep ends; the outcome is shown and a sweep that did not succeed exits 3."""
    with display.SweepView(display.console(), as_json) as view:
        sweep = client.sweeps.wait(sweep_id, on_progress=view.update, poll_interval=interval)
    view.finished(sweep, client.sweeps.trials(sweep_id))
    if sweep.status != "succeeded":
        raise typer.Exit(JOB_NOT_SUCCEEDED)
    return sweep


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
    runtime: str = typer.Option(
        "torch", "--runtime", help="torch (as trained), onnx (ONNX Runtime) or int8 (quantized Linear layers)"
    ),
    as_json: bool = JSON,
) -> None:
    """Point an alias at a model (says which model it replaces)."""
    with connect() as client:
        before = {a.name: a.model_id for a in client.aliases.list()}.get(name)
        alias = client.aliases.set(name, model_id, force=force, runtime=runtime)
    if as_json:
        return display.print_json(alias)
    replaced = f" (was {before})" if before and before != alias.model_id else ""
    on = f" on {alias.runtime}" if alias.runtime != "torch" else ""
    typer.echo(f"alias {alias.name} -> {alias.model_id}{on}{replaced}")


@aliases.command("list")
def aliases_list(as_json: bool = JSON) -> None:
    """The team's aliases."""
    with connect() as client:
        items = client.aliases.list()
    if as_json:
        return display.print_json(items)
    out = display.table("ALIAS", "MODEL", "RUNTIME", "UPDATED")
    for a in items:
        out.add_row(a.name, a.model_id, a.runtime, f"{display.age(a.updated_at)} ago")
    display.console().print(out)


def _run_line(run: PredictionRun) -> str:
    error = f" ({run.error})" if run.error else ""
    return f"{run.id}  {run.status}  {run.rows_done}/{run.rows_total} rows  model {run.model_id}{error}"


@predictions.command("create")
def predictions_create(
    dataset_id: Annotated[str | None, typer.Argument(help="the dataset to score (or --file)")] = None,
    file: Annotated[
        Path | None, typer.Option("--file", exists=True, dir_okay=False, help="a CSV/JSONL of texts to score")
    ] = None,
    label_column: str = typer.Option(None, "--label-column", help="the file's column of true labels, if any"),
    model: str = typer.Option(None, "--model", help="a model id or alias (default: the alias production)"),
    split: str = typer.Option(None, "--split", help="only this split: train, val or test"),
    top_k: int = typer.Option(1, "--top-k", min=1, max=100, help="labels per row"),
    wait: bool = typer.Option(False, "--wait", help="follow the run until it ends"),
    as_json: bool = JSON,
) -> None:
    """Score every row of a dataset (or a file of texts) with a model on a worker; download the results with
    `predictions download`."""
    if (dataset_id is None) == (file is None):
        raise typer.BadParameter("give a dataset id or --file (one of them)")
    with connect() as client:
        run = client.predictions.create(
            dataset_id, file=file, model=model, split=split, top_k=top_k, label_column=label_column
        )
        if wait:
            run = client.predictions.wait(run.id, on_progress=None if as_json else lambda r: typer.echo(_run_line(r)))
    if as_json:
        return display.print_json(run)
    if not wait:
        typer.echo(_run_line(run))
    if run.status in ("failed", "cancelled"):
        raise typer.Exit(1)


@predictions.command("list")
def predictions_list(limit: int = typer.Option(20, min=1, help="the newest N"), as_json: bool = JSON) -> None:
    """The team's batch prediction runs, newest first."""
    with connect() as client:
        items = client.predictions.list(limit=limit)
    if as_json:
        return display.print_json(items)
    out = display.table("RUN", "STATUS", "ROWS", "MODEL", "DATASET", "SPLIT", "CREATED")
    for r in items:
        rows = f"{r.rows_done}/{r.rows_total}"
        created = f"{display.age(r.created_at)} ago"
        out.add_row(r.id, r.status, rows, r.model_id or "-", r.dataset_id or "-", r.split or "all", created)
    display.console().print(out)


@predictions.command("show")
def predictions_show(run_id: str, as_json: bool = JSON) -> None:
    """A run's status and progress."""
    with connect() as client:
        run = client.predictions.get(run_id)
    if as_json:
        return display.print_json(run)
    typer.echo(_run_line(run))


@predictions.command("cancel")
def predictions_cancel(run_id: str, as_json: bool = JSON) -> None:
    """Cancel a queued or running run."""
    with connect() as client:
        run = client.predictions.cancel(run_id)
    if as_json:
        return display.print_json(run)
    typer.echo(_run_line(run))


@predictions.command("delete")
def predictions_delete(run_id: str) -> None:
    """Delete a finished run with its results (and uploaded file), freeing their storage."""
    with connect() as client:
        client.predictions.delete(run_id)
    typer.echo(f"deleted {run_id}")


@predictions.command("download")
def predictions_download(
    run_id: str,
    path: Annotated[Path, typer.Argument(dir_okay=False, help="the file to write")],
    format: str = typer.Option("csv", "--format", help="csv or jsonl"),
) -> None:
    """Write a succeeded run's results to a file."""
    if format not in ("csv", "jsonl"):
        raise typer.BadParameter("csv or jsonl", param_hint="--format")
    with connect() as client:
        written = client.predictions.download(run_id, path, format="jsonl" if format == "jsonl" else "csv")
    typer.echo(f"wrote {written}")


def predict(
    texts: Annotated[list[str] | None, typer.Argument(help="texts to classify")] = None,
    image: Annotated[
        list[Path] | None, typer.Option("--image", "-i", exists=True, dir_okay=False, help="an image (repeatable)")
    ] = None,
    model: str = typer.Option(None, "--model", help="a model id or alias (default: the alias production)"),
    top_k: int = typer.Option(1, "--top-k", min=1, help="labels per input"),
    calibrated: bool = typer.Option(False, "--calibrated", help="scores scaled by the model's fitted temperature"),
    as_json: bool = JSON,
) -> None:
    """Classify texts (arguments) or images (--image)."""
    if bool(texts) == bool(image):
        raise typer.BadParameter("give texts or --image files (one kind)")
    with connect() as client:
        if texts:
            result = client.predict(texts, model=model, top_k=top_k, calibrated=calibrated)
        else:
            result = client.predict(images=image or [], model=model, top_k=top_k, calibrated=calibrated)
    if as_json:
        return display.print_json(result)
    inputs = list(texts) if texts else [str(p) for p in image or []]
    display.console().print(display.predictions_table(inputs, result))
