"""Where a run is: everything besides tensors that a resume needs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FitState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of `epoch` already trained, in that epoch's seeded order
    best_value: float | None = None
    best_loss: float | None = None  # the validation loss at the best step (breaks ties of a score)
    best_step: int | None = None
    best_checkpoint: str | None = None
    evals_without_improvement: int = 0
    stopped_early: bool = False
    top_val_accuracy: float | None = None  # the highest validation accuracy any evaluation reached
    micro_batches: int | None = None  # per optimizer step, once an out-of-memory error doubled them; None: the spec's
