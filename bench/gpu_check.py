"""The parts of bench/gpu_check.sh that need Python: the machine, the out-of-memory fallback, and a 2-GPU job.

    python bench/gpu_check.py env          # one JSON line: torch, CUDA, the devices and their bf16 support
    python bench/gpu_check.py oom          # a real CUDA out-of-memory error, forced with a large batch
    python bench/gpu_check.py ddp          # a job with resources.gpus=2 through the service (`finetune up`)

oom: a BERT-base-sized text model (random weights, a word-level vocabulary: nothing to download) trained for 2
optimizer steps at batch_size 4096 and 512 tokens in bf16 through build_run + fit, as the worker runs it. Its
activations (about 0.3 GB per example) cannot fit any single GPU at micro-batch 4096, so the loop must halve
the micro-batch until it fits; the figure says how many halvings, the micro-batch that fitted, peak GPU memory and
seconds. `--batch`, `--length`, `--layers` change the size. A smoke pass of the code on a CPU, where no real
out-of-memory error can be had: `oom --device cpu --inject 1 --batch 16 --length 32 --layers 2` (the test-only
injection of FINETUNE_TEST_OOM_AT_STEP).

ddp: `finetune up` (API and one worker holding every visible GPU) in a temporary var dir, the same synthetic
model (small: 4 layers), a 4,000-row dataset and a 1-epoch job asking for resources {"gpus": 2}; the figure is its
status, wall time, median training samples/s and the events that mention devices. Skipped, with a line saying so,
on a machine with fewer than two GPUs.

Each figure is one JSON line on stdout ({"check": ...}); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

LABELS = ["negative", "positive"]
WORDS = {"negative": ["bad", "awful", "dull"], "positive": ["good", "great", "fine"]}
FILLER = [f"w{i}" for i in range(200)]


def build_text_model(folder: Path, layers: int, hidden: int = 768, positions: int = 512) -> Path:
    """A BERT with random weights and a word-level tokenizer, in Hugging Face format (offline, seconds)."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *FILLER, *sum(WORDS.values(), [])]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}, model_max_length=positions)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=hidden // 64,
        intermediate_size=4 * hidden, max_position_embeddings=positions, num_labels=len(LABELS),
    )  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def text_rows(n: int, words: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = LABELS[i % 2]
        tokens = [rng.choice(FILLER) for _ in range(words - 1)] + [rng.choice(WORDS[label])]
        rng.shuffle(tokens)
        rows.append({"text": " ".join(tokens), "label": label})
    return rows


def check_env() -> None:
    import torch

    figure: dict = {"check": "env", "torch": torch.__version__, "cuda": torch.version.cuda}
    figure["devices"] = [
        {"name": torch.cuda.get_device_name(i), "capability": ".".join(map(str, torch.cuda.get_device_capability(i))),
         "memory_gb": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1)}
        for i in range(torch.cuda.device_count())
    ] if torch.cuda.is_available() else []  # fmt: skip
    if torch.cuda.is_available():
        from worker.training.precision import choose_precision

        figure["auto_precision"] = choose_precision("auto", torch.device("cuda")).reason
    C.emit(**figure)


class EventHooks:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.rates: list[float] = []

    def log_step(self, step, epoch, loss, lr, samples_per_s) -> None:
        self.rates.append(samples_per_s)
        C.log(f"[oom] step {step} loss {loss:.4f} {samples_per_s:.1f} samples/s")

    def log_eval(self, step, epoch, values) -> None:
        pass

    def at_step_boundary(self, run) -> None:
        pass

    def save_checkpoint(self, run, metric_name, value, is_best) -> None:
        pass

    def event(self, kind, message) -> None:
        C.log(f"[oom] {kind}: {message}")
        self.events.append((kind, message))


def check_oom(batch: int, length: int, layers: int, device: str, inject: int | None) -> None:
    import torch

    from app.jobs.schemas import Hyperparameters
    from worker.training.loop import fit
    from worker.training.setup import build_run

    if device == "cuda" and not torch.cuda.is_available():
        C.emit(check="oom_fallback", skipped="no CUDA device")
        return
    cuda = device == "cuda"
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        base = build_text_model(Path(tmp) / "bert", layers, positions=max(length, 8))
        rows = text_rows(batch + 128, words=length + 16)  # longer than `length` tokens: every batch pads to it
        records = [{**r, "split": "train" if i < batch else ("val", "test")[i % 2]} for i, r in enumerate(rows)]
        hp = Hyperparameters(batch_size=batch, max_length=length, max_steps=2, epochs=2, precision="bf16",
                             early_stopping=None, learning_rate=1e-5)  # fmt: skip
        C.log(f"[oom] building the run: {batch} x {length} tokens, {layers} layers")
        run, _ = build_run("text_classification", base, LABELS, records, hp, torch.device(device))
        run.oom_at_step = inject
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        hooks, started, error = EventHooks(), time.perf_counter(), None
        try:
            fit(run, hooks)
        except Exception as exc:  # the figure says how it ended
            error = f"{type(exc).__name__}: {exc}"[:500]
        halvings = [m for kind, m in hooks.events if kind == "out_of_memory"]
        micro = run.micro_batches
        C.emit(
            check="oom_fallback", device=device, injected_at_step=inject, batch=batch, length=length, layers=layers, precision=run.precision.name,
            halvings=len(halvings), micro_batches=micro, micro_batch=-(-batch // micro), steps=run.state.step,
            ok=error is None and bool(halvings) and run.state.step == 2, error=error,
            peak_gpu_memory_gb=round(torch.cuda.max_memory_allocated() / 2**30, 1) if cuda else None,
            seconds=round(time.perf_counter() - started, 1),
            median_samples_per_s=round(sorted(hooks.rates)[len(hooks.rates) // 2], 1) if hooks.rates else None,
            events=halvings,
        )  # fmt: skip


def check_ddp(timeout: float) -> None:
    import csv
    import io

    import torch

    devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if devices < 2:
        C.emit(check="ddp_2_gpus", skipped=f"{devices} CUDA device(s): a 2-GPU job needs two")
        return
    with tempfile.TemporaryDirectory(prefix="gpu-check-ddp-") as tmp:
        models = Path(tmp) / "models"
        build_text_model(models / "bert-small", layers=4, positions=128)
        env = C.service_env(Path(tmp) / "var", models)
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["text", "label"])
        for row in text_rows(4000, words=100, seed=1):
            writer.writerow([row["text"], row["label"]])
        with C.running_service(Path(tmp), env) as service:
            client = C.Client(service.url, service.key)
            dataset = client.datasets.upload(out.getvalue().encode(), "text_classification", filename="ddp.csv")
            hp = {"epochs": 1, "batch_size": 64, "max_length": 128, "early_stopping": None, "precision": "bf16"}
            started = time.perf_counter()
            job = client.jobs.create(dataset.id, "bert-small", hp, gpus=2)
            final = client.jobs.wait(job.id, timeout=timeout)
            seconds = time.perf_counter() - started
            rates = sorted(m.value for m in client.jobs.metrics(job.id, "samples_per_s"))
            events = list(client.jobs.events(job.id))
            C.emit(
                check="ddp_2_gpus", status=final.status, error=final.error, seconds=round(seconds, 1),
                steps=final.step, median_samples_per_s=round(rates[len(rates) // 2], 1) if rates else None,
                events=[f"{e.kind}: {e.message}" for e in events
                        if any(w in e.message.lower() for w in ("gpu", "device", "rank", "precision"))][:10],
            )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=("env", "oom", "ddp"))
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="oom: cpu only with --inject")
    parser.add_argument("--inject", type=int, help="oom: also inject an out-of-memory error at this step (test only)")
    parser.add_argument("--timeout", type=float, default=120, help="ddp: seconds to wait for the job")
    args = parser.parse_args()
    C.quiet()
    try:
        if args.part == "env":
            check_env()
        elif args.part == "oom":
            check_oom(args.batch, args.length, args.layers, args.device, args.inject)
        else:
            check_ddp(args.timeout)
    except Exception as exc:  # one line that says what broke, whatever it was
        C.emit(check=args.part, error=f"{type(exc).__name__}: {exc}"[:1000])
        raise SystemExit(1) from exc


if __name__ == "__main__":
    main()
