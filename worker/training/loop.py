"""The training loop, top to bottom: fit() calls train_step() and, when due, evaluate() and a checkpoint."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from peft import PeftModel
from transformers import PreTrainedModel

from app.jobs.schemas import Hyperparameters
from app.jobs.stop_reasons import JobFailed
from app.tasktypes.common import Preprocessing
from app.tasktypes.specs import TaskSpec
from worker.training.augment import epoch_augmentation
from worker.training.data import SplitData, batches, epoch_order
from worker.training.evaluation import summary_metrics
from worker.training.loss import normalizer, summed_loss
from worker.training.precision import FP32, Precision, autocast
from worker.training.state import FitState

if TYPE_CHECKING:
    from worker.training.distributed import DataParallel

MINIMIZED = {"val_loss"}
DEFAULT_METRIC = "val_accuracy"  # which checkpoint is best when early stopping is off


class RunHooks(Protocol):
    """What the loop reports to the outside world (the database and the artifact store)."""

    def log_step(self, step: int, epoch: float, loss: float, lr: float, samples_per_s: float) -> None: ...
    def log_eval(self, step: int, epoch: float, values: dict[str, float]) -> None: ...
    def at_step_boundary(self, run: Run) -> None:
        """May raise to stop the run here (app.jobs.stop_reasons: cancelled, handed back, lease lost)."""

    def save_checkpoint(self, run: Run, metric_name: str | None, value: float | None, is_best: bool) -> None: ...
    def event(self, kind: str, message: str) -> None:
        """Something the user should know about the run (the job's events)."""


@dataclass
class Run:
    """Everything one training run holds; `state` is what changes."""

    model: PreTrainedModel | PeftModel  # PeftModel: trained with an adapter (worker/training/adapters.py)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    spec: TaskSpec
    processor: Any
    prep: Preprocessing
    hp: Hyperparameters
    splits: dict[str, SplitData]
    device: torch.device
    steps_per_epoch: int
    total_steps: int
    state: FitState = field(default_factory=FitState)
    head: list[str] = field(default_factory=list)  # the classification head's parameter names
    head_is_new: bool = True  # initialised fresh for these labels (not a fine-tuned model's own head)
    class_weights: torch.Tensor | None = None  # per label index, on `device`; None: all classes weigh 1
    precision: Precision = FP32  # chosen for `device` by build_run (worker/training/precision.py)
    scaler: torch.amp.GradScaler | None = None  # fp16's loss scaling; checkpointed with the run
    oom_at_step: int | None = None  # test only (FINETUNE_TEST_OOM_AT_STEP): a CUDA out-of-memory error at this step
    parallel: DataParallel | None = None  # this rank's part when the job trains on several devices

    @property
    def batch_size(self) -> int:
        """The batch decided for this job (apply_defaults fills a left-out one before a Run exists)."""
        assert self.hp.batch_size is not None, "apply_defaults decides it"
        return self.hp.batch_size

    @property
    def micro_batches(self) -> int:
        """Micro-batches per optimizer step: gradient_accumulation_steps, doubled after each out-of-memory error
        (the count lives in the state, so a resume keeps it)."""
        return self.state.micro_batches or self.hp.gradient_accumulation_steps

    @property
    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]


def fit(run: Run, hooks: RunHooks) -> FitState:
    """Train until the epochs or max_steps are done, early stopping fires, or the user cancels."""
    s, hp = run.state, run.hp
    run.model.train()
    while s.step < run.total_steps and not s.stopped_early:
        order = epoch_order(len(run.splits["train"]), hp.seed, s.epoch)
        augment = epoch_augmentation(hp.augmentation, run.prep.image_size, hp.seed, s.epoch)
        source = run.parallel.batches if run.parallel else batches  # a rank trains its share of each batch
        for inputs, labels in source(
            run.splits["train"], run.spec, run.processor, run.prep, run.batch_size, order, s.batch_in_epoch, augment
        ):
            started = time.perf_counter()
            loss, rows = train_step(run, inputs, labels, hooks), len(labels)
            if run.parallel:
                loss, rows = run.parallel.whole_batch(loss, labels)
            s.step += 1
            s.batch_in_epoch += 1
            if s.batch_in_epoch == run.steps_per_epoch:
                s.epoch, s.batch_in_epoch = s.epoch + 1, 0
            rate = rows / max(time.perf_counter() - started, 1e-9)
            hooks.log_step(s.step, epoch_progress(run), loss, run.scheduler.get_last_lr()[0], rate)
            if evaluation_due(run) and (run.parallel is None or run.parallel.leads):
                evaluate_and_checkpoint(run, hooks)
            hooks.at_step_boundary(run)
            if s.stopped_early or s.step >= run.total_steps:
                break
    return s


def train_step(run: Run, inputs: dict[str, torch.Tensor], labels: torch.Tensor, hooks: RunHooks | None = None) -> float:
    """One optimizer step on one batch, in `run.micro_batches` micro-batches whose gradients add up to the whole
    batch's; returns the batch's mean training loss (weighted and smoothed as the spec says). A CUDA out-of-memory
    error in the forward or backward passes (on any of the job's devices) halves the micro-batch and redoes the step
    (reported through `hooks`). On several devices the gradients are averaged across ranks once the passes are done."""
    inputs, labels = to_device(inputs, run.device), labels.to(run.device, non_blocking=True)
    rng = random_state(run.device)
    while True:
        out_of_memory = False
        try:
            batch_loss = accumulate_gradients(run, inputs, labels)
        except torch.cuda.OutOfMemoryError:
            out_of_memory = True  # recover outside this block: until it ends, the traceback holds the pass's tensors
        ranks = ranks_out_of_memory(run, out_of_memory)
        if not ranks:
            break
        message = halve_micro_batch(run, ranks)  # on several devices, every rank halves and redoes the step
        restore_random_state(run.device, rng)  # the redone step draws the same dropout as a first try would
        if hooks is not None:
            hooks.event("out_of_memory", message)
    if run.parallel:
        run.parallel.average_gradients(run.trainable)
    if run.scaler is not None:
        run.scaler.unscale_(run.optimizer)  # clip the true gradients
    if run.hp.max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(run.trainable, run.hp.max_grad_norm)
    if run.scaler is not None:
        run.scaler.step(run.optimizer)  # skipped when fp16 overflowed; the scale then shrinks
        run.scaler.update()
    else:
        run.optimizer.step()
    run.scheduler.step()
    return batch_loss


def accumulate_gradients(run: Run, inputs: dict[str, torch.Tensor], labels: torch.Tensor) -> float:
    """Fresh gradients of the whole batch, summed over its micro-batches; returns the batch's loss."""
    run.optimizer.zero_grad(set_to_none=True)
    weights, smoothing = run.class_weights, run.hp.label_smoothing
    total = run.parallel.normalizer(labels, weights) if run.parallel else normalizer(labels, weights)
    batch_loss = 0.0
    for part, part_labels in micro_batches(inputs, labels, run.micro_batches):
        with autocast(run.device, run.precision):
            logits = run.model(**part).logits
        loss = summed_loss(logits, part_labels, weights, smoothing) / total
        (run.scaler.scale(loss) if run.scaler is not None else loss).backward()
        batch_loss += loss.item()
        if run.oom_at_step == run.state.step + 1:  # fault injection for tests: after a pass, as a real one would
            run.oom_at_step = None
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (injected at step {run.state.step + 1})")
    return batch_loss


def halve_micro_batch(run: Run, ranks: list[int]) -> str:
    """After an out-of-memory error (on `ranks`): twice as many micro-batches, each half as large; the batch, its
    gradient and the schedule stay what they were. Fails the job when a micro-batch of one example did not fit."""
    step, before = run.state.step + 1, micro_batch_rows(run)
    run.optimizer.zero_grad(set_to_none=True)
    if run.device.type == "cuda":
        torch.cuda.empty_cache()
    where, each = "", ""
    if run.parallel is not None:
        where = f" on device{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))} of {run.parallel.world}"
        each = " per device"
    if before <= 1:
        raise JobFailed(
            f"CUDA out of memory at step {step}{where} with a micro-batch of one example{each}: this model does not "
            "fit the GPU's memory at this input size; use a smaller max_length or image_size, an adapter or a "
            "frozen backbone, or a pool with larger GPUs"
        )
    run.state.micro_batches = run.micro_batches * 2
    return (
        f"CUDA out of memory at step {step}{where} with micro-batches of {before} examples{each}: redoing the step "
        f"in {run.micro_batches} micro-batches of {micro_batch_rows(run)}{each} (gradient accumulation "
        f"{run.micro_batches}); batch_size {run.batch_size}, the gradient and the schedule are unchanged"
    )


def ranks_out_of_memory(run: Run, mine: bool) -> list[int]:
    """The job's devices that ran out of memory in this step's passes (on several devices every rank learns the
    same list, so all of them redo the step or none does)."""
    if run.parallel is not None:
        return run.parallel.ranks_out_of_memory(mine)
    return [0] if mine else []


def micro_batch_rows(run: Run) -> int:
    """Examples in one micro-batch on one device (a full batch)."""
    devices = run.parallel.world if run.parallel else 1
    return math.ceil(run.batch_size / devices / run.micro_batches)


def random_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def restore_random_state(device: torch.device, state: tuple[torch.Tensor, torch.Tensor | None]) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def micro_batches(
    inputs: dict[str, Any], labels: torch.Tensor, steps: int
) -> list[tuple[dict[str, Any], torch.Tensor]]:
    """The batch cut into `steps` micro-batches of batch_size / steps rows (fewer when a last batch is short)."""
    if steps == 1:
        return [(inputs, labels)]
    size = math.ceil(len(labels) / steps)
    parts = []
    for begin in range(0, len(labels), size):
        rows = slice(begin, begin + size)
        part = {k: v[rows] if isinstance(v, torch.Tensor) and v.ndim else v for k, v in inputs.items()}
        parts.append((part, labels[rows]))
    return parts


@torch.no_grad()
def evaluate(run: Run, split: str) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean loss, true labels and predictions on `split`, in eval mode."""
    total_loss, seen, predictions = 0.0, 0, []
    for logits, labels in eval_batches(run, split):
        total_loss += F.cross_entropy(logits, labels, reduction="sum").item()
        seen += len(labels)
        predictions.append(logits.argmax(dim=-1).cpu())
    predicted = torch.cat(predictions).numpy() if predictions else np.zeros(0, dtype=np.int64)
    return total_loss / max(seen, 1), run.splits[split].labels.numpy(), predicted


@torch.no_grad()
def split_logits(run: Run, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Every example's logits (float32, examples x labels) and true labels on `split`, in eval mode."""
    parts = [logits.cpu() for logits, _ in eval_batches(run, split)]
    logits = torch.cat(parts).numpy() if parts else np.zeros((0, len(run.prep.labels)), dtype=np.float32)
    return logits, run.splits[split].labels.numpy()


@torch.no_grad()
def eval_batches(run: Run, split: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(float32 logits, labels) of each batch of `split`, in order, with the model in eval mode meanwhile."""
    run.model.eval()
    try:
        data = run.splits[split]
        size = max(math.ceil(run.batch_size / run.micro_batches), 64)  # what fits in training fits here
        for inputs, labels in batches(data, run.spec, run.processor, run.prep, size):
            labels = labels.to(run.device)
            with autocast(run.device, run.precision):
                logits = run.model(**to_device(inputs, run.device)).logits.float()
            yield logits, labels
    finally:
        run.model.train()


def evaluate_and_checkpoint(run: Run, hooks: RunHooks) -> None:
    """Validation metrics, early-stopping bookkeeping, then a checkpoint holding that state."""
    s, es = run.state, run.hp.early_stopping
    split = "val" if len(run.splits["val"]) else "train"
    loss, labels, predicted = evaluate(run, split)
    scores = summary_metrics(labels, predicted, len(run.prep.labels))
    values = {"val_loss": loss, "val_accuracy": scores["accuracy"], "val_macro_f1": scores["macro_f1"]}
    hooks.log_eval(s.step, epoch_progress(run), values)
    if not math.isnan(values["val_accuracy"]):
        s.top_val_accuracy = max(s.top_val_accuracy or 0.0, values["val_accuracy"])
    metric = es.metric if es else DEFAULT_METRIC
    improved = is_improvement(values[metric], s.best_value, metric, es.min_delta if es else 0.0, loss, s.best_loss)
    if improved:
        s.best_value, s.best_loss, s.best_step, s.evals_without_improvement = values[metric], loss, s.step, 0
    else:
        s.evals_without_improvement += 1
    if es and s.evals_without_improvement >= es.patience and s.step < run.total_steps:
        s.stopped_early = True
    hooks.save_checkpoint(run, metric, values[metric], improved)


def evaluation_due(run: Run) -> bool:
    s, every = run.state, run.hp.eval_every_steps
    if s.step >= run.total_steps:
        return True
    if every:
        return s.step % every == 0
    return s.batch_in_epoch == 0


def is_improvement(
    value: float, best: float | None, metric: str, min_delta: float, loss: float, best_loss: float | None
) -> bool:
    """Better by more than `min_delta`; for a score (accuracy, F1), a tie with a lower validation loss counts too,
    since on a small validation split scores move in coarse steps while the loss still tells the runs apart."""
    if best is None or math.isnan(best):
        return not math.isnan(value)
    if metric in MINIMIZED:
        return value < best - min_delta
    if value > best + min_delta:
        return True
    return value >= best and best_loss is not None and loss < best_loss


def epoch_progress(run: Run) -> float:
    return run.state.epoch + run.state.batch_in_epoch / run.steps_per_epoch


def to_device(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Tensors moved to `device` (to a GPU from pinned memory, without waiting); flags (interpolate_pos_encoding) as
    they are."""
    if device.type == "cpu":
        return inputs
    pin = device.type == "cuda"
    return {
        k: (v.pin_memory() if pin else v).to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        for k, v in inputs.items()
    }
