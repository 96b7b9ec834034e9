"""How the CLI shows things to people: rich tables, the report's summary, and the live views of a job and a sweep."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from finetune_client.types import ClassScores, Dataset, Job, Model, PredictResult, Report, Sweep, Trial
from finetune_client.types import Progress as JobProgress


def console(stderr: bool = False) -> Console:
    """A console on the current stdout (or stderr); piped output gets wide lines instead of 80 columns."""
    out = Console(stderr=stderr, highlight=False)
    if not out.is_terminal:
        out.width = max(out.width, 200)
    return out


def print_json(value: Any) -> None:
    """One JSON document on stdout (models as the API's JSON, lists as arrays)."""
    print(json.dumps(_plain(value)), flush=True)


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def age(when: datetime | None) -> str:
    """How long ago, shortly: 40s, 12m, 5h, 3d."""
    if when is None:
        return "-"
    seconds = (datetime.now(UTC) - (when if when.tzinfo else when.replace(tzinfo=UTC))).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size:.0f}{unit}"
    return f"{max(seconds, 0):.0f}s"


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def number(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(*columns: str, title: str | None = None) -> Table:
    out = Table(*columns, title=title, title_justify="left", box=None, header_style="bold", pad_edge=False)
    for column in out.columns:
        column.no_wrap = True
    return out


def datasets_table(datasets: list[Dataset]) -> Table:
    out = table("ID", "NAME", "TASK", "CLASSES", "EXAMPLES", "MB", "AGE")
    for d in datasets:
        out.add_row(
            d.id,
            d.name,
            d.task,
            str(len(d.labels)),
            str(d.num_examples),
            f"{d.size_bytes / 2**20:.1f}",
            age(d.created_at),
        )
    return out


def show_dataset(out: Console, d: Dataset) -> None:
    out.print(f"[bold]{d.name}[/bold]  {d.id}  {d.task}, {d.num_examples} examples, {len(d.labels)} classes")
    splits = list(d.counts)
    counts = table("CLASS", *(s.upper() for s in splits))
    for label in d.labels:
        counts.add_row(label, *(str(d.counts[s].get(label, 0)) for s in splits))
    counts.add_row("[bold]total[/bold]", *(str(sum(d.counts[s].values())) for s in splits))
    out.print(counts)
    if not d.splits_given:
        out.print("splits: made by the service (stratified 80/10/10, fixed seed)")
    for warning in d.warnings:
        out.print(f"[yellow]warning:[/yellow] {warning}")


def jobs_table(jobs: list[Job]) -> Table:
    out = table("ID", "STATUS", "PROGRESS", "STEP", "BEST", "BASE MODEL", "AGE")
    for j in jobs:
        best = f"{j.best_metric_name}={j.best_metric:.4f}" if j.best_metric is not None else "-"
        steps = f"{j.step}/{j.total_steps}" if j.total_steps else str(j.step)
        out.add_row(j.id, j.status, percent(j.progress), steps, best, j.base_model, age(j.created_at))
    return out


def show_job(out: Console, j: Job) -> None:
    fields = table("", "")
    fields.show_header = False
    for name in ("id", "status", "dataset_id", "base_model", "task", "model_id", "error", "attempt", "priority"):
        value = getattr(j, name)
        if value not in (None, ""):
            fields.add_row(name, str(value))
    if j.resources:
        fields.add_row("resources", ", ".join(f"{k} {v}" for k, v in j.resources.items()))
    if j.queue_position is not None:
        fields.add_row("queue", f"position {j.queue_position}: {j.waiting_detail or j.waiting_for}")
    fields.add_row("progress", f"{percent(j.progress)} (step {j.step}/{j.total_steps or '?'}, epoch {j.epoch})")
    if j.best_metric is not None:
        fields.add_row("best", f"{j.best_metric_name} {j.best_metric:.4f}")
    for name in ("created_at", "started_at", "finished_at"):
        when = getattr(j, name)
        if when is not None:
            fields.add_row(name, f"{when:%Y-%m-%d %H:%M:%S} ({age(when)} ago)")
    if j.below_baseline:
        fields.add_row("warning", "below baseline: the model never beat the majority class")
    out.print(fields)
    shown = {k: v for k, v in j.hyperparameters.items() if k not in ("auto", "expected_memory")}
    out.print("hyperparameters: " + ", ".join(f"{k}={json.dumps(v)}" for k, v in shown.items()))
    for setting, why in (j.hyperparameters.get("auto") or {}).items():
        out.print(f"  auto {setting}: {why}")


def report_summary(report: Report) -> Table:
    """Test accuracy and macro-F1 of the fine-tuned model beside its baselines on the same splits."""
    out = table("", "ACCURACY", "MACRO-F1", title=f"on the {report.split} split ({report.num_examples} examples)")
    macro = report.macro_avg.f1 if report.macro_avg else None
    out.add_row("fine-tuned", percent(report.accuracy), number(macro, 3))
    names = {"majority_class": "majority class", "linear_probe": "linear probe"}
    for key, baseline in report.baselines.items():
        label = names.get(key, key) + (f" ('{baseline['label']}')" if "label" in baseline else "")
        out.add_row(label, percent(baseline.get("accuracy")), number(baseline.get("macro_f1"), 3))
    return out


def show_report(out: Console, report: Report) -> None:
    out.print(report_summary(report))
    if report.below_baseline:
        out.print("[yellow]warning:[/yellow] below baseline: no evaluation beat the majority class")
    per_class = table("CLASS", "PRECISION", "RECALL", "F1", "SUPPORT", title="per class")
    rows: dict[str, ClassScores | None] = dict(report.per_class)
    rows.update({"macro avg": report.macro_avg, "weighted avg": report.weighted_avg} if report.macro_avg else {})
    for label, scores in rows.items():
        if scores is not None:
            per_class.add_row(
                label, number(scores.precision, 3), number(scores.recall, 3), number(scores.f1, 3), str(scores.support)
            )
    out.print(per_class)
    if report.confusion_matrix:
        labels = report.confusion_matrix.labels
        matrix = table("TRUE \\ PREDICTED", *labels, title="confusion matrix")
        for label, row in zip(labels, report.confusion_matrix.matrix, strict=True):
            matrix.add_row(label, *(str(n) for n in row))
        out.print(matrix)
    show_mistakes(out, report)


def show_mistakes(out: Console, report: Report, shown: int = 5) -> None:
    """Calibration in one line, the most-confused pairs and the most confident mistakes."""
    c = report.calibration
    if c is not None and c.ece is not None:
        after = f", {number(c.ece_calibrated, 3)} at temperature {number(c.temperature, 3)}" if c.temperature else ""
        out.print(f"expected calibration error {number(c.ece, 3)}{after}")
    if report.confused_pairs:
        pairs = table("TRUE", "PREDICTED", "COUNT", title="most confused")
        for p in report.confused_pairs[:shown]:
            pairs.add_row(p.true_label, p.predicted_label, str(p.count))
        out.print(pairs)
    if report.misclassified:
        mistakes = table("#", "TRUE", "PREDICTED", "SCORE", "EXAMPLE", title="most confident mistakes")
        for m in report.misclassified[:shown]:
            example = m.text if m.text is not None else (m.image_url or "")
            example = example if len(example) <= 60 else example[:57] + "..."
            mistakes.add_row(str(m.index), m.true_label, m.predicted_label, number(m.score, 3), example)
        out.print(mistakes)


def models_table(models: list[Model], aliases: dict[str, list[str]]) -> Table:
    out = table("ID", "NAME", "BASE MODEL", "TEST ACC", "MACRO-F1", "PROBE ACC", "ALIASES", "AGE")
    for m in models:
        metrics = m.metrics
        out.add_row(
            m.id, m.name, m.base_model, percent(metrics.get("test_accuracy")), number(metrics.get("test_macro_f1"), 3),
            percent(metrics.get("linear_probe_accuracy")), ",".join(aliases.get(m.id, [])) or "-", age(m.created_at),
        )  # fmt: skip
        if m.below_baseline:
            out.add_row("", "[yellow]below baseline[/yellow]", "", "", "", "", "", "")
    return out


def predictions_table(inputs: list[str], result: PredictResult) -> Table:
    out = table("INPUT", "PREDICTIONS", title=f"model {result.model_id}")
    for text, top in zip(inputs, result.predictions, strict=True):
        shown = text if len(text) <= 60 else text[:57] + "..."
        out.add_row(shown, "  ".join(f"{p.label} {p.score:.3f}" for p in top))
    return out


class JobView:
    """The live view of one job for `jobs watch`: a rich progress bar (step/total, epoch, loss, ETA) on a terminal,
    one line per change elsewhere (logs, pipes); or, with `as_json`, one JSON line per change."""

    def __init__(self, out: Console, as_json: bool = False) -> None:
        self.out, self.as_json = out, as_json
        self.bar: Progress | None = None
        self.task_id: Any = None
        self.shown: tuple = ()

    def __enter__(self) -> JobView:
        if self.out.is_terminal and not self.as_json:
            self.bar = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("epoch {task.fields[epoch]}"), TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[best]}"), TimeRemainingColumn(), console=self.out,
            )  # fmt: skip
            self.bar.start()
            self.task_id = self.bar.add_task("", total=None, epoch="-", loss="-", best="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def update(self, progress: JobProgress) -> None:
        job, metrics = progress.job, progress.metrics
        loss = metrics["train_loss"].value if "train_loss" in metrics else None
        val = metrics.get("val_accuracy")
        snapshot = (job.status, job.step, job.total_steps, job.epoch, loss, val.step if val else None)
        if snapshot == self.shown:
            return
        self.shown = snapshot
        best = f"best {job.best_metric_name} {job.best_metric:.4f}" if job.best_metric is not None else ""
        if self.as_json:
            values = {name: m.value for name, m in metrics.items()}
            print(json.dumps({"type": "progress", "job": _plain(job), "metrics": values}), flush=True)
        elif self.bar is not None:
            self.bar.update(
                self.task_id, description=f"{job.id[:8]} {job.status}", total=job.total_steps, completed=job.step,
                epoch=job.epoch, loss=number(loss), best=best,
            )  # fmt: skip
        else:
            steps = f"step {job.step}/{job.total_steps}" if job.total_steps else f"step {job.step}"
            self.out.print(
                f"{job.id[:8]} {job.status:<9} {steps} epoch {job.epoch} loss {number(loss)} {best}".rstrip()
            )

    def finished(self, job: Job, report: Report | None, events: list[str]) -> None:
        """The outcome: the report's summary on success, the error and the last events otherwise."""
        if self.as_json:
            print(json.dumps({"type": "finished", "job": _plain(job), "report": _plain(report)}), flush=True)
            return
        took = ""
        if job.started_at and job.finished_at:
            took = f" in {(job.finished_at - job.started_at).total_seconds():.0f} s"
        if job.status == "succeeded":
            self.out.print(f"job {job.id} succeeded{took}: model {job.model_id}")
            if report is not None:
                self.out.print(report_summary(report))
                if report.below_baseline:
                    self.out.print("[yellow]warning:[/yellow] below baseline: no evaluation beat the majority class")
            return
        self.out.print(f"[red]job {job.id} {job.status}[/red]{took}" + (f": {job.error}" if job.error else ""))
        for line in events:
            self.out.print(f"  {line}")


# --- sweeps -----------------------------------------------------------------------------------------------------

TRIAL_STATES = ("queued", "running", "succeeded", "pruned", "failed", "cancelled", "rejected")


def counts_text(sweep: Sweep) -> str:
    """Trials by state in a fixed order: "running 1, succeeded 2, pruned 1"."""
    order = [s for s in TRIAL_STATES if s in sweep.counts] + sorted(set(sweep.counts) - set(TRIAL_STATES))
    return ", ".join(f"{state} {sweep.counts[state]}" for state in order) or "no trials yet"


def objective_name(sweep: Sweep) -> str:
    return str((sweep.spec.get("objective") or {}).get("metric", "objective"))


def params_text(hyperparameters: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={json.dumps(v)}" for k, v in
                     hyperparameters.items())  # fmt: skip


def best_text(sweep: Sweep) -> str:
    best = sweep.best_trial
    if best is None:
        return "best: -"
    return (
        f"best: trial {best.number} {objective_name(sweep)} {best.objective:.4f} ({params_text(best.hyperparameters)})"
    )


def budget_text(sweep: Sweep) -> str:
    used = sweep.budget_used
    steps = f"{used.steps}/{used.steps_limit}" if used.steps_limit is not None else str(used.steps)
    seconds = (
        f"{used.seconds:.0f}/{used.seconds_limit:g} s" if used.seconds_limit is not None else f"{used.seconds:.0f} s"
    )
    return f"steps {steps}, {seconds}"


def sweeps_table(sweeps: list[Sweep]) -> Table:
    out = table("ID", "STATUS", "TRIALS", "BEST", "STEPS", "BASE MODEL", "AGE")
    for s in sweeps:
        best = f"{objective_name(s)}={s.best_trial.objective:.4f}" if s.best_trial else "-"
        trials = f"{s.trials_started}/{s.spec.get('max_trials', '?')}"
        out.add_row(s.id, s.status, trials, best, str(s.budget_used.steps), s.base_model, age(s.created_at))
    return out


def show_sweep(out: Console, s: Sweep) -> None:
    fields = table("", "")
    fields.show_header = False
    spec = s.spec
    objective = spec.get("objective") or {}
    pruner = spec.get("pruner") or {}
    rows = {
        "id": s.id, "status": s.status, "dataset_id": s.dataset_id, "base_model": s.base_model,
        "objective": f"{objective.get('direction', '')} {objective.get('metric', '')}".strip(),
        "search": f"{spec.get('sampler')} sampler, {pruner.get('type')} pruner, seed {spec.get('seed')}",
        "trials": f"{s.trials_started} started of {spec.get('max_trials')} ({spec.get('parallelism')} at once): "
        f"{counts_text(s)}",
        "budget used": budget_text(s), "stop_reason": s.stop_reason, "promoted_model_id": s.promoted_model_id,
    }  # fmt: skip
    for name, value in rows.items():
        if value not in (None, ""):
            fields.add_row(name, str(value))
    for name in ("created_at", "finished_at"):
        when = getattr(s, name)
        if when is not None:
            fields.add_row(name, f"{when:%Y-%m-%d %H:%M:%S} ({age(when)} ago)")
    out.print(fields)
    out.print("search space: " + ", ".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in
                                           (spec.get("search_space") or {}).items()))  # fmt: skip
    out.print(best_text(s))


def trials_table(sweep: Sweep | None, trials: list[Trial]) -> Table:
    best = sweep.best_trial.number if sweep and sweep.best_trial else None
    out = table("#", "STATUS", "OBJECTIVE", "STEPS", "HYPERPARAMETERS", "JOB", "MODEL")
    for t in trials:
        mark = " *" if t.number == best else ""
        status = t.status + (f" ({t.error})" if t.error else "")
        out.add_row(
            f"{t.number}{mark}", status, number(t.objective), str(t.steps), params_text(t.hyperparameters),
            t.job_id or "-", t.model_id or "-",
        )  # fmt: skip
    return out


class SweepView:
    """The live view of one sweep for `sweeps watch`: a line redrawn in place on a terminal (counts by state, the
    best trial so far, steps used), one line per change elsewhere; or, with `as_json`, one JSON line per change."""

    def __init__(self, out: Console, as_json: bool = False) -> None:
        self.out, self.as_json = out, as_json
        self.live: Live | None = None

    def __enter__(self) -> SweepView:
        if self.out.is_terminal and not self.as_json:
            self.live = Live(console=self.out, auto_refresh=False, transient=True)
            self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.stop()

    def line(self, sweep: Sweep) -> str:
        return f"{sweep.id[:8]} {sweep.status:<9} {counts_text(sweep)} | {budget_text(sweep)} | {best_text(sweep)}"

    def update(self, sweep: Sweep) -> None:
        if self.as_json:
            print(json.dumps({"type": "progress", "sweep": _plain(sweep)}), flush=True)
        elif self.live is not None:
            self.live.update(self.line(sweep), refresh=True)
        else:
            self.out.print(self.line(sweep), markup=False)

    def finished(self, sweep: Sweep, trials: list[Trial]) -> None:
        """The outcome: the trials, then the best trial's hyperparameters and objective."""
        if self.as_json:
            print(json.dumps({"type": "finished", "sweep": _plain(sweep), "trials": _plain(trials)}), flush=True)
            return
        took = ""
        if sweep.created_at and sweep.finished_at:
            took = f" in {(sweep.finished_at - sweep.created_at).total_seconds():.0f} s"
        colour = "green" if sweep.status == "succeeded" else "red"
        self.out.print(f"[{colour}]sweep {sweep.id} {sweep.status}[/{colour}]{took}: {sweep.stop_reason or ''}")
        self.out.print(trials_table(sweep, trials))
        best = sweep.best_trial
        if best is None:
            self.out.print("no trial completed")
            return
        self.out.print(
            f"best trial {best.number}: {objective_name(sweep)} {best.objective:.4f}, model {best.model_id or '-'}"
        )
        for name, value in best.hyperparameters.items():
            self.out.print(f"  {name} = {json.dumps(value)}", markup=False)
