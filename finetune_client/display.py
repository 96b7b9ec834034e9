"""How the CLI shows things to people: rich tables, the report's summary, and the live view of a job."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from finetune_client.types import ClassScores, Dataset, Job, Model, PredictResult, Report
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
    for name in ("id", "status", "dataset_id", "base_model", "task", "model_id", "error", "attempt"):
        value = getattr(j, name)
        if value not in (None, ""):
            fields.add_row(name, str(value))
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
