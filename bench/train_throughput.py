"""Training throughput and peak memory: the service's loop vs a hand-written PyTorch loop vs transformers' Trainer.

    python bench/train_throughput.py [--cases minilm,efficientnet] [--rounds 3] [--warmup 2] [--steps 10]
                                     [--device cpu|cuda]

Cases (real pretrained models, real data, every sample the same shape so all methods do identical work):
  minilm        MiniLM-L6 text classification (Rotten Tomatoes fresh/rotten), seq 64 (every text is >= 64 tokens
                and truncated to 64, so the service's dynamic padding also gives 64), batch 32
  efficientnet  EfficientNet-Lite0 on MNIST digits at 112 px, batch 32

Methods (same model weights, data, batch size, shapes, torch threads; each in train mode with a fresh head):
  service       worker.training.setup.build_run + worker.training.loop.fit with timing hooks (default
                Hyperparameters: fused AdamW, grad clipping 1.0, linear schedule, per-step log_step)
  service_lora  the same with a LoRA adapter on the default layers (not in the default --methods; compare it with
                --methods service,service_lora, which also prints its paired ratio to service)
  service_lora_dropout  the same with dropout 0.1 on the adapter's input (what the dropout masks cost)
  hand          the tutorial loop: DataLoader(TensorDataset, shuffle) over pre-tokenized / pre-normalised tensors,
                torch.optim.AdamW(model.parameters(), lr) with its defaults, zero_grad / forward / loss / backward /
                step, loss.item() per step
  hand_fused    the same loop with AdamW(fused=True) (diagnostic: isolates the optimizer's share)
  trainer       transformers.Trainer (its defaults: fused AdamW, clipping 1.0, linear schedule), no eval, no saving,
                no logging, report_to=[]

Throughput is steady state: every round runs `warmup` + `steps` optimizer steps per method and times the last
`steps` (timestamps taken right after each optimizer step, so data loading/collation between steps is included,
one-off preprocessing is not). Methods are interleaved round by round in one process (order rotated each round);
the figure is the median over rounds, and each method is reported as a ratio to `hand`.

Peak memory: each method is also run alone in a fresh subprocess (same data, warmup + 4 steps) and reports the
process's peak RSS (VmHWM, i.e. ru_maxrss without what Linux carries over from the forking parent) and the RSS peak sampled (psutil, 5 ms) during the training steps.

With --device cuda (bench/gpu_check.sh) every method trains on the GPU in bf16: the service with precision "bf16"
(autocast), the hand loops under bf16 autocast, Trainer with bf16=True; each step's timestamp is taken after a CUDA
synchronize, so queued kernels are not counted as done.

Finally it checks that the service preprocesses once: it counts calls to the task's encode, the tokenizer /
image decoder and PIL.Image.open during build_run and during each of 2 training epochs of fit.

Needs: pip install accelerate psutil (Trainer needs accelerate); the packaged models and data (see bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

BATCH = 32
SEQ = 64
IMAGE_PX = 112
LR = 5e-5  # the service's default learning rate, used by every method
METHODS = ("service", "hand", "hand_fused", "trainer")
DEVICE = "cpu"  # --device: cpu, or cuda (bf16 for every method)
CASES = ("minilm", "efficientnet")


# --- data -------------------------------------------------------------------------------------------------------


def case_records(case: str, n_train: int) -> tuple[str, Path, list[str], list[dict]]:
    """(task, base model folder, labels, records with n_train train rows and 32 val / 32 test rows)."""
    data = C.ensure_data()
    models = C.ensure_models()
    if case == "minilm":
        labels, rows = C.parse_records("text_classification", data["rotten_tomatoes"])
        texts = [r for r in rows if r["split"] == "train"]
        # Join consecutive reviews until each text has more than 64 tokens: all are then truncated to exactly 64.
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(models / C.MINILM))
        joined, k = [], 0
        while len(joined) < n_train + 64:
            label, parts = texts[k % len(texts)]["label"], []
            while len(tok(" ".join(parts))["input_ids"]) <= SEQ:
                parts.append(texts[k % len(texts)]["text"])
                k += 1
            joined.append({"label": label, "text": " ".join(parts)})
        records = [dict(r, split="train") for r in joined[:n_train]]
        records += [dict(r, split="val") for r in joined[n_train : n_train + 32]]
        records += [dict(r, split="test") for r in joined[n_train + 32 : n_train + 64]]
        return "text_classification", models / C.MINILM, labels, records
    labels, rows = C.parse_records("image_classification", data["mnist"])
    train = [r for r in rows if r["split"] == "train"]
    val = [r for r in rows if r["split"] == "val"][:32]
    test = [r for r in rows if r["split"] == "test"][:32]
    if n_train > len(train):
        train = (train * (n_train // len(train) + 1))[:n_train]
    # mix the classes (the upload is ordered by folder)
    order = sorted(range(len(train)), key=lambda i: (i * 7919) % len(train))
    return "image_classification", models / C.EFFICIENTNET, labels, [train[i] for i in order][:n_train] + val + test


def service_hp(case: str, **options):
    from app.jobs.schemas import Hyperparameters

    extra = {"max_length": SEQ} if case == "minilm" else {"image_size": IMAGE_PX}
    return Hyperparameters(
        **options, batch_size=BATCH, learning_rate=LR, precision="bf16" if DEVICE == "cuda" else "fp32", **extra
    )


def stamp() -> float:
    """Now, once the GPU has done what was queued (CUDA runs asynchronously)."""
    if DEVICE == "cuda":
        import torch

        torch.cuda.synchronize()
    return time.perf_counter()


def plain_tensors(case: str, base: Path, labels: list[str], records: list[dict]):
    """Pre-tokenized / pre-normalised train tensors for the hand loop and Trainer (preprocessing not timed)."""
    import torch

    train = [r for r in records if r["split"] == "train"]
    index = {label: i for i, label in enumerate(labels)}
    y = torch.tensor([index[r["label"]] for r in train])
    if case == "minilm":
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(base))
        enc = tok(
            [r["text"] for r in train], truncation=True, max_length=SEQ, padding="max_length", return_tensors="pt"
        )
        assert int(enc["attention_mask"].sum(1).min()) == SEQ, "some text is shorter than 64 tokens"
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}, y
    from transformers import AutoImageProcessor

    from app.tasktypes.image import _processor_stats, decode

    _, mean, std = _processor_stats(AutoImageProcessor.from_pretrained(str(base)))
    pixels = torch.stack([decode(r["image"], IMAGE_PX) for r in train]).float() / 255.0
    pixels = (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    return {"pixel_values": pixels}, y


def load_hf_model(case: str, base: Path, labels: list[str]):
    from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

    cls = AutoModelForSequenceClassification if case == "minilm" else AutoModelForImageClassification
    model = cls.from_pretrained(str(base), num_labels=len(labels), ignore_mismatched_sizes=True)
    return model.to(DEVICE).train()


# --- methods: each has prepare() once, then round(n) -> timestamps after each of n optimizer steps -----------------


class ServiceMethod:
    name = "service"
    options: dict = {}

    def __init__(self, case: str, task: str, base: Path, labels: list[str], records: list[dict]) -> None:
        import torch

        from worker.training.setup import build_run

        self.run, _ = build_run(task, base, labels, records, service_hp(case, **self.options), torch.device(DEVICE))

    def round(self, n: int) -> list[float]:
        from worker.training.loop import fit
        from worker.training.state import FitState

        hooks = TimingHooks()
        self.run.state = FitState()
        self.run.total_steps = n  # fit stops after n steps (then evaluates once, after the last timestamp)
        fit(self.run, hooks)
        return hooks.times


class ServiceLoraMethod(ServiceMethod):
    """The service's loop with a LoRA adapter on its default layers (issue 14: at least 1.3x full fine-tuning)."""

    name = "service_lora"
    options = {"adapter": {"type": "lora"}}


class ServiceLoraDropoutMethod(ServiceMethod):
    """The same with dropout 0.1 on the adapter's input (the default before 2026-11-30), for what the masks cost."""

    name = "service_lora_dropout"
    options = {"adapter": {"type": "lora", "dropout": 0.1}}


class TimingHooks:
    """RunHooks that only take a timestamp per step."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def log_step(self, step, epoch, loss, lr, samples_per_s) -> None:
        self.times.append(stamp())

    def log_eval(self, step, epoch, values) -> None:
        pass

    def at_step_boundary(self, run) -> None:
        pass

    def save_checkpoint(self, run, metric_name, value, is_best) -> None:
        pass

    def event(self, kind, message) -> None:
        C.log(f"[service] {kind}: {message}")


class HandMethod:
    """The loop from every tutorial."""

    name = "hand"
    fused = False

    def __init__(self, case: str, task: str, base: Path, labels: list[str], records: list[dict]) -> None:
        import torch
        from torch.utils.data import DataLoader, TensorDataset

        torch.manual_seed(0)
        inputs, y = plain_tensors(case, base, labels, records)
        self.keys = list(inputs)
        self.loader = DataLoader(TensorDataset(*inputs.values(), y), batch_size=BATCH, shuffle=True)
        self.model = load_hf_model(case, base, labels)
        kwargs = {"fused": True} if self.fused else {}
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=LR, **kwargs)

    def round(self, n: int) -> list[float]:
        import torch

        times, running = [], 0.0
        self.model.train()
        while len(times) < n:
            for *xs, y in self.loader:
                self.optimizer.zero_grad()
                batch = {k: x.to(DEVICE) for k, x in zip(self.keys, xs, strict=True)}
                with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=DEVICE == "cuda"):
                    outputs = self.model(**batch, labels=y.to(DEVICE))
                loss = outputs.loss
                loss.backward()
                self.optimizer.step()
                running += loss.item()
                times.append(stamp())
                if len(times) == n:
                    break
        return times


class HandFusedMethod(HandMethod):
    name = "hand_fused"
    fused = True


class TrainerMethod:
    name = "trainer"

    def __init__(self, case: str, task: str, base: Path, labels: list[str], records: list[dict]) -> None:
        import torch
        from transformers import Trainer, TrainerCallback, TrainingArguments

        inputs, y = plain_tensors(case, base, labels, records)

        class Data(torch.utils.data.Dataset):
            def __len__(self) -> int:
                return len(y)

            def __getitem__(self, i: int) -> dict:
                return {**{k: v[i] for k, v in inputs.items()}, "labels": y[i]}

        times = self.times = []

        class Stamp(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                times.append(stamp())

        self.tmp = tempfile.TemporaryDirectory(prefix="bench-trainer-")
        self.args = TrainingArguments(
            output_dir=self.tmp.name,
            per_device_train_batch_size=BATCH,
            learning_rate=LR,
            max_steps=1,
            eval_strategy="no",
            save_strategy="no",
            logging_strategy="no",
            report_to=[],
            disable_tqdm=True,
            use_cpu=DEVICE == "cpu",
            bf16=DEVICE == "cuda",
            dataloader_num_workers=0,
            dataloader_pin_memory=DEVICE == "cuda",
            seed=0,
        )
        self.trainer = Trainer(model=load_hf_model(case, base, labels), args=self.args, train_dataset=Data())
        self.trainer.add_callback(Stamp())

    def round(self, n: int) -> list[float]:
        self.times.clear()
        self.trainer.args.max_steps = n
        self.trainer.train()
        return list(self.times)


CLASSES = {
    m.name: m
    for m in (ServiceMethod, ServiceLoraMethod, ServiceLoraDropoutMethod, HandMethod, HandFusedMethod, TrainerMethod)
}


def samples_per_s(times: list[float], warmup: int) -> float:
    timed = times[warmup - 1 :] if warmup >= 1 else times
    return BATCH * (len(timed) - 1) / (timed[-1] - timed[0])


# --- the measurements ---------------------------------------------------------------------------------------------


def measure_throughput(case: str, methods: list[str], rounds: int, warmup: int, steps: int) -> dict[str, dict]:
    n = warmup + steps
    task, base, labels, records = case_records(case, n * BATCH)
    built = {}
    for name in methods:
        C.log(f"[{case}] preparing {name}")
        built[name] = CLASSES[name](case, task, base, labels, records)
    results: dict[str, list[float]] = {name: [] for name in methods}
    for r in range(rounds):
        order = methods[r % len(methods) :] + methods[: r % len(methods)]
        for name in order:
            rate = samples_per_s(built[name].round(n), warmup)
            results[name].append(rate)
            C.log(f"[{case}] round {r + 1}/{rounds} {name}: {rate:.1f} samples/s")
    return {
        name: {"samples_per_s": statistics.median(rates), "rounds": [round(x, 2) for x in rates]}
        for name, rates in results.items()
    }


def paired(figures: dict, method: str, reference: str) -> float | None:
    """Median over rounds of method/reference within the same round (steadier than a ratio of medians when the
    machine's load drifts between rounds)."""
    if method not in figures or reference not in figures:
        return None
    ratios = [a / b for a, b in zip(figures[method]["rounds"], figures[reference]["rounds"], strict=True)]
    return round(statistics.median(ratios), 3)


def paired_range(figures: dict, method: str, reference: str) -> list[float] | None:
    if method not in figures or reference not in figures:
        return None
    ratios = [a / b for a, b in zip(figures[method]["rounds"], figures[reference]["rounds"], strict=True)]
    return [round(min(ratios), 3), round(max(ratios), 3)]


def memory_child(case: str, method: str, warmup: int, steps: int) -> None:
    """Run one method alone in this (fresh) process; print its memory as JSON."""
    C.set_threads()
    n = warmup + steps
    task, base, labels, records = case_records(case, n * BATCH)
    m = CLASSES[method](case, task, base, labels, records)
    ready = C.rss_mb()
    with C.PeakRss() as peak:
        times = m.round(n)
    print(
        json.dumps(
            {
                "rss_ready_mb": ready,
                "train_peak_rss_mb": peak.peak_mb,
                "process_peak_rss_mb": C.hwm_rss_mb(),
                "samples_per_s": samples_per_s(times, warmup),
            }
        )
    )


def measure_memory(case: str, method: str) -> dict:
    cmd = [sys.executable, __file__, "--memory-child", case, method]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"memory run {case}/{method} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


class Counter:
    """Counts calls to named callables while installed."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.undo: list = []

    def wrap(self, owner: object, attr: str, label: str) -> None:
        original = getattr(owner, attr)
        own = isinstance(owner, type) is False or attr in owner.__dict__

        def counted(*args, **kwargs):
            self.counts[label] = self.counts.get(label, 0) + 1
            return original(*args, **kwargs)

        setattr(owner, attr, counted)
        self.undo.append((owner, attr, original, own))

    def snapshot(self) -> dict[str, int]:
        return dict(self.counts)

    def restore(self) -> None:
        for owner, attr, original, own in reversed(self.undo):
            if own:
                setattr(owner, attr, original)
            else:
                delattr(owner, attr)  # it was inherited: uncover the base class's again


def diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(set(after) | set(before))}


def profile_service(case: str, warmup: int, steps: int) -> dict:
    """Where a step of the service's loop goes: the real fit(), with timers wrapped around its parts.

    Phases (mean ms per step over `steps` steps after `warmup`): batch (select + collate), forward, loss+backward
    (the rest of train_step), clip_grad_norm, optimizer.step, scheduler.step, and outside (fit's own bookkeeping,
    log_step, evaluation_due, the hooks) = wall time between steps minus the rest.
    """
    import dataclasses

    import torch

    from worker.training import loop

    n = warmup + steps
    task, base, labels, records = case_records(case, n * BATCH)
    method = ServiceMethod(case, task, base, labels, records)
    run = method.run
    spent: dict[str, float] = {}
    marks: list[dict[str, float]] = []

    def timed(label: str, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[label] = spent.get(label, 0.0) + time.perf_counter() - t0

        return wrapper

    original_spec, original_clip = run.spec, torch.nn.utils.clip_grad_norm_
    original_train_step = loop.train_step
    run.spec = dataclasses.replace(
        run.spec, collate=timed("batch", run.spec.collate), select=timed("batch", run.spec.select)
    )
    run.model.forward = timed("forward", run.model.forward)
    run.optimizer.step = timed("optimizer_step", run.optimizer.step)
    run.scheduler.step = timed("scheduler_step", run.scheduler.step)
    torch.nn.utils.clip_grad_norm_ = timed("clip_grad_norm", original_clip)
    loop.train_step = timed("train_step", original_train_step)

    class Hooks(TimingHooks):
        def log_step(self, step, epoch, loss, lr, samples_per_s) -> None:
            super().log_step(step, epoch, loss, lr, samples_per_s)
            marks.append(dict(spent))

    try:
        hooks = Hooks()
        run.state = type(run.state)()
        run.total_steps = n
        loop.fit(run, hooks)
    finally:
        torch.nn.utils.clip_grad_norm_ = original_clip
        loop.train_step = original_train_step
        run.spec = original_spec
        del run.model.forward, run.optimizer.step, run.scheduler.step
    t = hooks.times
    wall = (t[-1] - t[warmup - 1]) / steps * 1000
    first, last = marks[warmup - 1], marks[-1]
    per = {k: (last.get(k, 0.0) - first.get(k, 0.0)) / steps * 1000 for k in last}
    inside = per.pop("train_step")
    out = {
        "step_ms": wall,
        "batch_ms": per.get("batch", 0.0),
        "forward_ms": per.get("forward", 0.0),
        "clip_grad_norm_ms": per.get("clip_grad_norm", 0.0),
        "optimizer_step_ms": per.get("optimizer_step", 0.0),
        "scheduler_step_ms": per.get("scheduler_step", 0.0),
    }
    out["loss_backward_other_ms"] = (
        inside - out["forward_ms"] - out["clip_grad_norm_ms"] - out["optimizer_step_ms"] - out["scheduler_step_ms"]
    )
    out["outside_train_step_ms"] = wall - inside - out["batch_ms"]
    return {k: round(v, 2) for k, v in out.items()}


def profile_hand(case: str, warmup: int, steps: int, fused: bool) -> dict:
    """The hand loop's step, split the same way (batch = DataLoader fetch)."""
    import torch

    n = warmup + steps
    task, base, labels, records = case_records(case, n * BATCH)
    m = (HandFusedMethod if fused else HandMethod)(case, task, base, labels, records)
    rows = []
    it = iter(m.loader)
    for i in range(n):
        t0 = time.perf_counter()
        try:
            *xs, y = next(it)
        except StopIteration:
            it = iter(m.loader)
            *xs, y = next(it)
        t1 = time.perf_counter()
        m.optimizer.zero_grad()
        outputs = m.model(**dict(zip(m.keys, xs, strict=True)), labels=y)
        t2 = time.perf_counter()
        outputs.loss.backward()
        t3 = time.perf_counter()
        m.optimizer.step()
        t4 = time.perf_counter()
        outputs.loss.item()
        t5 = time.perf_counter()
        if i >= warmup:
            rows.append((t5 - t0, t1 - t0, t2 - t1, t3 - t2, t4 - t3))
    mean = [sum(col) / len(rows) * 1000 for col in zip(*rows, strict=True)]
    del torch
    return {k: round(v, 2) for k, v in zip(("step_ms", "batch_ms", "forward_ms", "loss_backward_other_ms",
                                            "optimizer_step_ms"), mean, strict=True)}  # fmt: skip


def check_preprocess_once(case: str) -> dict:
    """Count encode / tokenizer / decoder calls in build_run and in each of 2 epochs of fit."""
    import dataclasses

    import torch
    from PIL import Image

    from app.jobs.schemas import Hyperparameters
    from app.tasktypes import image as image_task
    from app.tasktypes import specs
    from app.tasktypes.types import TaskType
    from worker.training.loop import fit
    from worker.training.setup import build_run

    task, base, labels, records = case_records(case, 4 * BATCH)
    counter = Counter()
    tt = TaskType(task)
    spec = specs.TASKS[tt]
    processor_cls = []

    def load_processor(path: Path):
        processor = spec.load_processor(path)
        cls = type(processor)
        for attr in ("__call__", "encode", "encode_plus", "batch_encode_plus", "_encode_plus", "_batch_encode_plus",
                     "preprocess", "decode", "batch_decode"):  # fmt: skip
            if hasattr(cls, attr):
                counter.wrap(cls, attr, f"processor.{attr}")
        processor_cls.append(cls)
        return processor

    counter.wrap(image_task, "decode", "image.decode")
    counter.wrap(Image, "open", "PIL.Image.open")
    specs.TASKS[tt] = dataclasses.replace(spec, load_processor=load_processor)
    encode = spec.encode

    def counted_encode(processor, inputs, prep):
        counter.counts["spec.encode"] = counter.counts.get("spec.encode", 0) + 1
        return encode(processor, inputs, prep)

    specs.TASKS[tt] = dataclasses.replace(specs.TASKS[tt], encode=counted_encode)
    try:
        extra = {"max_length": SEQ} if case == "minilm" else {"image_size": IMAGE_PX}
        hp = Hyperparameters(batch_size=BATCH, epochs=2, early_stopping=None, **extra)
        start = counter.snapshot()
        run, _ = build_run(task, base, labels, records, hp, torch.device("cpu"))
        after_build = counter.snapshot()

        class EpochHooks(TimingHooks):
            def __init__(self) -> None:
                super().__init__()
                self.marks: dict[int, dict[str, int]] = {}

            def log_eval(self, step, epoch, values) -> None:
                self.marks[round(epoch)] = counter.snapshot()  # after each epoch's evaluation

        hooks = EpochHooks()
        fit(run, hooks)
    finally:
        specs.TASKS[tt] = spec
        counter.restore()
    return {
        "build_run": diff(after_build, start),
        "fit_epoch_1": diff(hooks.marks[1], after_build),
        "fit_epoch_2": diff(hooks.marks[2], hooks.marks[1]),
        "steps": run.state.step,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--no-memory", action="store_true", help="skip the per-method memory subprocesses")
    parser.add_argument("--no-check", action="store_true", help="skip the preprocess-once check")
    parser.add_argument("--profile", action="store_true", help="only a per-phase breakdown of a step, per case")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: every method in bf16")
    parser.add_argument("--memory-child", nargs=2, metavar=("CASE", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    if args.memory_child:
        memory_child(*args.memory_child, warmup=2, steps=4)
        return
    n_threads = C.set_threads()
    cases = [c for c in args.cases.split(",") if c]
    methods = [m for m in args.methods.split(",") if m]
    import torch
    import transformers

    C.log(f"torch {torch.__version__}, transformers {transformers.__version__}, {n_threads} torch threads")
    if args.profile:
        prows = []
        for case in cases:
            for name, fn in (("service", lambda c: profile_service(c, args.warmup, args.steps)),
                             ("hand", lambda c: profile_hand(c, args.warmup, args.steps, False)),
                             ("hand_fused", lambda c: profile_hand(c, args.warmup, args.steps, True))):  # fmt: skip
                fig = {"bench": "train_step_profile", "case": case, "method": name, **fn(case)}
                C.emit(**fig)
                prows.append(fig)
        cols = ["case", "method", "step_ms", "batch_ms", "forward_ms", "loss_backward_other_ms", "clip_grad_norm_ms",
                "optimizer_step_ms", "scheduler_step_ms", "outside_train_step_ms"]  # fmt: skip
        print()
        print(C.table(prows, cols, title="Mean ms per training step, by phase"))
        return
    rows = []
    for case in cases:
        figures = measure_throughput(case, methods, args.rounds, args.warmup, args.steps)
        base_rate = figures.get("hand", {}).get("samples_per_s")
        for method in methods:
            fig = figures[method]
            row = {
                "bench": "train_throughput",
                "case": case,
                "method": method,
                "batch": BATCH,
                **({"seq": SEQ} if case == "minilm" else {"image_px": IMAGE_PX}),
                "threads": n_threads,
                "device": DEVICE,
                "samples_per_s": round(fig["samples_per_s"], 2),
                "ratio_to_hand": round(fig["samples_per_s"] / base_rate, 3) if base_rate else None,
                "paired_ratio_to_hand": paired(figures, method, "hand"),
                **(
                    {"paired_ratio_to_service": paired(figures, method, "service")}
                    if method.startswith("service_lora")
                    else {}
                ),
                "rounds_samples_per_s": fig["rounds"],
            }
            if not args.no_memory:
                C.log(f"[{case}] memory run: {method}")
                mem = measure_memory(case, method)
                row.update(
                    process_peak_rss_mb=round(mem["process_peak_rss_mb"]),
                    train_peak_rss_mb=round(mem["train_peak_rss_mb"]),
                    train_rss_growth_mb=round(mem["train_peak_rss_mb"] - mem["rss_ready_mb"]),
                )
            C.emit(**row)
            rows.append(row)
        if "service" in figures and base_rate:
            ratio = figures["service"]["samples_per_s"] / base_rate
            trainer_rate = figures.get("trainer", {}).get("samples_per_s")
            target = {
                "bench": "train_throughput_target",
                "case": case,
                "service_vs_hand": round(ratio, 3),
                "service_vs_hand_paired": paired(figures, "service", "hand"),
                "service_vs_hand_paired_range": paired_range(figures, "service", "hand"),
                "service_ge_0.97x_hand": ratio >= 0.97,
            }
            if trainer_rate:
                target["service_vs_trainer"] = round(figures["service"]["samples_per_s"] / trainer_rate, 3)
                target["service_vs_trainer_paired"] = paired(figures, "service", "trainer")
                target["service_vs_trainer_paired_range"] = paired_range(figures, "service", "trainer")
                target["service_ge_trainer"] = figures["service"]["samples_per_s"] >= trainer_rate
            C.emit(**target)
    checks = []
    if not args.no_check:
        for case in cases:
            C.log(f"[{case}] preprocess-once check")
            counts = check_preprocess_once(case)
            epoch2 = counts["fit_epoch_2"]
            ok = all(v == 0 for v in epoch2.values()) and all(v == 0 for v in counts["fit_epoch_1"].values())
            fig = {"bench": "preprocess_once", "case": case, **counts, "epoch_2_no_preprocessing": ok}
            C.emit(**fig)
            checks.append(fig)
    cols = ["case", "method", "samples_per_s", "ratio_to_hand", "paired_ratio_to_hand", "rounds_samples_per_s"]
    if not args.no_memory:
        cols += ["process_peak_rss_mb", "train_peak_rss_mb", "train_rss_growth_mb"]
    print()
    print(C.table(rows, cols, title=f"Training throughput (batch {BATCH}, {n_threads} threads, median of rounds)"))
    for fig in checks:
        print(
            f"preprocess once [{fig['case']}]: build_run {fig['build_run']}; epoch 1 {fig['fit_epoch_1']}; "
            f"epoch 2 {fig['fit_epoch_2']} -> {'OK' if fig['epoch_2_no_preprocessing'] else 'PREPROCESSING IN FIT'}"
        )


if __name__ == "__main__":
    main()
