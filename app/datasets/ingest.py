"""Parse an uploaded dataset (a zip of class folders, or a CSV/JSONL file) into labelled, split records."""

from __future__ import annotations

import hashlib
import random
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from typing import BinaryIO

from app.datasets.image_zip import parse_image_zip
from app.datasets.records import SPLITS, Record, plural
from app.datasets.text_file import parse_text
from app.errors import InvalidUpload, PayloadTooLarge
from app.input_limits import InputLimits
from app.tasktypes.types import TaskType

__all__ = ["SPLITS", "ParsedDataset", "Record", "parse_upload"]

HOLDOUT_FRACTION = 0.1
MIN_CLASS_EXAMPLES = 10
MAX_IMBALANCE = 10


@dataclass
class ParsedDataset:
    task: TaskType
    labels: list[str]  # sorted unique label names
    records: list[Record]
    counts: dict[str, dict[str, int]]  # split -> label -> count (every split and label present, zeros included)
    warnings: list[str]
    splits_given: bool  # True if the upload carried its own split
    archive: zipfile.ZipFile | None = None  # image uploads: the open upload, which the records' images stay in

    def image_bytes(self, record: Record) -> bytes:
        """One record's image file (read from the upload when the record names its entry)."""
        if record.image is not None:
            return record.image
        assert self.archive is not None and record.member is not None
        return self.archive.read(record.member)

    def close(self) -> None:
        if self.archive is not None:
            self.archive.close()


def parse_upload(
    task: TaskType,
    filename: str,
    data: bytes | BinaryIO,
    *,
    text_column: str = "text",
    label_column: str = "label",
    seed: int = 0,
    limits: InputLimits | None = None,
) -> ParsedDataset:
    """Validate an upload, split it if needed and report counts and warnings; raise InvalidUpload on user errors
    (and on anything over `limits`, the configured caps; default: the settings' defaults).

    `data` may be an open file (an upload spooled to disk): an image zip is then read one entry at a time and its
    images stay in it, so the caller keeps it open until the dataset is stored, then calls `close()`."""
    limits = limits or InputLimits()
    archive = None
    if task == TaskType.image_classification:
        records, splits_given, archive = parse_image_zip(data, limits)
    else:
        text = data if isinstance(data, bytes) else _read_capped(data, limits.max_text_upload_mb)
        records, splits_given = parse_text(filename, text, text_column, label_column, limits)
    try:
        return _checked(task, records, splits_given, seed, archive)
    except BaseException:
        if archive is not None:
            archive.close()
        raise


def _read_capped(upload: BinaryIO, limit_mb: int) -> bytes:
    """A text upload's bytes: text datasets are parsed in memory, so their size has a cap of its own."""
    data = upload.read(limit_mb * 1024 * 1024 + 1)
    if len(data) > limit_mb * 1024 * 1024:
        raise PayloadTooLarge(
            f"CSV and JSONL uploads are limited to {limit_mb} MB (FINETUNE_MAX_TEXT_UPLOAD_MB); that is millions of "
            "examples, more than fine-tuning a classifier needs: upload a sample"
        )
    return data


def _checked(
    task: TaskType, records: list[Record], splits_given: bool, seed: int, archive: zipfile.ZipFile | None
) -> ParsedDataset:
    if not records:
        raise InvalidUpload("the dataset is empty")
    labels = sorted({r.label for r in records})
    if len(labels) < 2:
        raise InvalidUpload(f"the dataset needs at least two classes; found only '{labels[0]}'")
    notes = _assign_splits(records, splits_given, seed)
    records.sort(key=lambda r: SPLITS.index(r.split))  # stable: keeps upload order within a split
    counts = {split: dict.fromkeys(labels, 0) for split in SPLITS}
    for r in records:
        counts[r.split][r.label] += 1
    missing_train = [label for label in labels if counts["train"][label] == 0]
    if missing_train:
        raise InvalidUpload(f"class '{missing_train[0]}' has no examples in the train split; add some to train")
    warnings = notes + _quality_warnings(records, labels, counts)
    return ParsedDataset(task, labels, records, counts, warnings, splits_given, archive)


# --- splitting -------------------------------------------------------------------------------------------------


def _assign_splits(records: list[Record], splits_given: bool, seed: int) -> list[str]:
    """Carve val/test out of train where the upload lacks them; return notes about what was carved."""
    present = {r.split for r in records}
    missing = tuple(s for s in ("val", "test") if s not in present)
    if missing:
        _carve_from_train(records, missing, seed)
    if splits_given and missing:
        names = " and ".join(missing)
        return [f"the upload has no {names} split; held out about 10% of each class in train for {names}"]
    return []


def _carve_from_train(records: list[Record], targets: tuple[str, ...], seed: int) -> None:
    """Move about 10% of each class's train records into each target split, stratified and seeded."""
    by_label: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        if r.split == "train":
            by_label[r.label].append(r)
    for label, group in by_label.items():
        shuffled = list(group)
        # Seeding per class keeps one class's split stable when other classes change.
        random.Random(f"{seed}:{label}").shuffle(shuffled)
        start = 0
        for split, size in zip(targets, _holdout_sizes(len(group), len(targets)), strict=True):
            for r in shuffled[start : start + size]:
                r.split = split
            start += size


def _holdout_sizes(n: int, k: int) -> list[int]:
    """Size of each of k holdout splits for a class of n: ~10% each, at least 1 when n >= 3, never all of train."""
    size = round(n * HOLDOUT_FRACTION)
    sizes = [max(size, 1) if n >= 3 else size for _ in range(k)]
    while sum(sizes) > n - 1:
        sizes[sizes.index(max(sizes))] -= 1
    return sizes


# --- warnings --------------------------------------------------------------------------------------------------


def _quality_warnings(records: list[Record], labels: list[str], counts: dict[str, dict[str, int]]) -> list[str]:
    """Human-readable warnings about small or imbalanced classes, empty split cells and leaked duplicates."""
    totals = {label: sum(counts[s][label] for s in SPLITS) for label in labels}
    warnings = [
        f"class '{label}' has only {plural(n, 'example')}; aim for at least {MIN_CLASS_EXAMPLES} per class"
        for label, n in totals.items()
        if n < MIN_CLASS_EXAMPLES
    ]
    largest, smallest = max(totals, key=totals.__getitem__), min(totals, key=totals.__getitem__)
    if totals[largest] > MAX_IMBALANCE * totals[smallest]:
        warnings.append(
            f"classes are imbalanced: '{largest}' has {totals[largest]} examples but '{smallest}' only "
            f"{totals[smallest]}; the model may rarely predict the small classes. Train with hyperparameters "
            '{"class_weights": "balanced"} to weigh each class by the inverse of its frequency; judge it by macro-F1'
        )
    for split in ("val", "test"):
        absent = [label for label in labels if counts[split][label] == 0]
        if absent:
            names = ", ".join(f"'{label}'" for label in absent)
            warnings.append(f"the {split} split has no examples of {names}; its metrics will not cover them")
    warnings.extend(_duplicate_warning(records))
    return warnings


def _duplicate_warning(records: list[Record]) -> list[str]:
    """Warn about identical examples: across splits they leak training data into evaluation; within one split
    they weigh more in training (or in the metrics) than the rest."""
    groups: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        if r.digest:
            groups[r.digest].append(r)
        else:
            content = r.image if r.image is not None else (r.text or "").encode()
            groups[hashlib.sha256(content).hexdigest()].append(r)
    repeated = [group for group in groups.values() if len(group) > 1]
    warnings = []
    leaked = [group for group in repeated if len({r.split for r in group}) > 1]
    if leaked:
        first = leaked[0][0]
        other = next(r for r in leaked[0] if r.split != first.split)
        warnings.append(
            f"{_appear(len(leaked))} in more than one split (e.g. {first.source} ({first.split}) and "
            f"{other.source} ({other.split})); evaluation may be optimistic"
        )
    for split in SPLITS:
        within = [[r for r in group if r.split == split] for group in repeated]
        within = [same for same in within if len(same) > 1]
        if within:
            example = " and ".join(r.source for r in within[0][:2])
            warnings.append(
                f"{_appear(len(within))} more than once within the {split} split (e.g. {example}); "
                "repeated examples weigh more than the others"
            )
    return warnings


def _appear(n: int) -> str:
    """'1 example appears', '3 examples appear'."""
    return f"{plural(n, 'example')} {'appears' if n == 1 else 'appear'}"
