"""The dataset as tensors: preprocessed once per job, then batched in a seeded order per epoch."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from app.jobs.memory import decoded_image_bytes
from app.tasktypes.common import Preprocessing
from app.tasktypes.image import DecodedPerBatch
from app.tasktypes.specs import TaskSpec
from worker.training.augment import Augment

SPLITS = ("train", "val", "test")


@dataclass
class SplitData:
    """One split: encoded inputs (token id lists, a uint8 image tensor or images decoded per batch) and label
    indices."""

    encoded: Any
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


def prepare_splits(
    records: list[dict], spec: TaskSpec, processor: Any, prep: Preprocessing, budget_bytes: int | None = None
) -> dict[str, SplitData]:
    """Decode or tokenize every record exactly once; images whose uint8 tensors would take more than
    `budget_bytes` in all are decoded per batch instead."""
    label_index = {label: i for i, label in enumerate(prep.labels)}
    side = prep.image_size
    per_batch = side is not None and budget_bytes is not None and decoded_image_bytes(len(records), side) > budget_bytes
    splits = {}
    for split in SPLITS:
        rows = [r for r in records if r["split"] == split]
        inputs = [spec.record_input(r) for r in rows]
        encoded = DecodedPerBatch(inputs, side) if per_batch and side else spec.encode(processor, inputs, prep)
        labels = torch.tensor([label_index[r["label"]] for r in rows], dtype=torch.long)
        splits[split] = SplitData(encoded, labels)
    return splits


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled order of epoch `epoch`: a function of (seed, epoch) alone, so a resume can replay it."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


def batches(
    data: SplitData,
    spec: TaskSpec,
    processor: Any,
    prep: Preprocessing,
    batch_size: int,
    order: torch.Tensor | None = None,
    start: int = 0,
    augment: Augment | None = None,
) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """(model inputs, labels) for each batch, in `order` (default: as stored), from batch number `start`; `augment`
    (training only) transforms each batch's decoded images, given the batch number, before normalisation."""
    indices = order if order is not None else torch.arange(len(data))
    for number, begin in enumerate(range(start * batch_size, len(data), batch_size), start=start):
        idx = indices[begin : begin + batch_size].tolist()
        selected = spec.select(data.encoded, idx)
        if augment is not None:
            selected = augment(selected, number)
        yield spec.collate(processor, prep, selected), data.labels[idx]
