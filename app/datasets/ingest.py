"""Parse an uploaded dataset (a zip of class folders, or a CSV/JSONL file) into labelled, split records."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import re
import warnings as pywarnings
import zipfile
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath

from PIL import Image, UnidentifiedImageError

from app.errors import InvalidUpload
from app.tasktypes.types import TaskType

SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
HOLDOUT_FRACTION = 0.1
MAX_UNCOMPRESSED_BYTES = 2 * 1024**3
MAX_ZIP_ENTRIES = 200_000
IGNORED_FILES = {"thumbs.db", "desktop.ini"}
MIN_CLASS_EXAMPLES = 10
MAX_IMBALANCE = 10
JSONL_SUFFIXES = {".jsonl", ".ndjson", ".json"}
IMAGE_HINT = "remove it or replace it with a JPEG/PNG/WebP/BMP/GIF/TIFF image"
LAYOUT_HINT = "expected <class>/<image> or train|val|test/<class>/<image>"


@dataclass
class Record:
    split: str  # "train" | "val" | "test"
    label: str
    text: str | None = None  # text tasks
    image: bytes | None = None  # image tasks: the original file bytes (already verified decodable)
    source: str = ""  # where it came from: "cat/001.jpg" or "line 12", used in messages


@dataclass
class ParsedDataset:
    task: TaskType
    labels: list[str]  # sorted unique label names
    records: list[Record]
    counts: dict[str, dict[str, int]]  # split -> label -> count (every split and label present, zeros included)
    warnings: list[str]
    splits_given: bool  # True if the upload carried its own split


def parse_upload(
    task: TaskType,
    filename: str,
    data: bytes,
    *,
    text_column: str = "text",
    label_column: str = "label",
    seed: int = 0,
) -> ParsedDataset:
    """Validate an upload, split it if needed and report counts and warnings; raise InvalidUpload on user errors."""
    if task == TaskType.image_classification:
        records, splits_given = _parse_image_zip(data)
    else:
        records, splits_given = _parse_text(filename, data, text_column, label_column)
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
    return ParsedDataset(task, labels, records, counts, warnings, splits_given)


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


def _split_name(raw: str) -> str | None:
    """Canonical split for a folder or column value, or None if it is not one."""
    return SPLIT_ALIASES.get(raw.strip().lower())


# --- warnings --------------------------------------------------------------------------------------------------


def _quality_warnings(records: list[Record], labels: list[str], counts: dict[str, dict[str, int]]) -> list[str]:
    """Human-readable warnings about small or imbalanced classes, empty split cells and leaked duplicates."""
    totals = {label: sum(counts[s][label] for s in SPLITS) for label in labels}
    warnings = [
        f"class '{label}' has only {_plural(n, 'example')}; aim for at least {MIN_CLASS_EXAMPLES} per class"
        for label, n in totals.items()
        if n < MIN_CLASS_EXAMPLES
    ]
    largest, smallest = max(totals, key=totals.__getitem__), min(totals, key=totals.__getitem__)
    if totals[largest] > MAX_IMBALANCE * totals[smallest]:
        warnings.append(
            f"classes are imbalanced: '{largest}' has {totals[largest]} examples but '{smallest}' only "
            f"{totals[smallest]}; the model may rarely predict the small classes"
        )
    for split in ("val", "test"):
        absent = [label for label in labels if counts[split][label] == 0]
        if absent:
            names = ", ".join(f"'{label}'" for label in absent)
            warnings.append(f"the {split} split has no examples of {names}; its metrics will not cover them")
    warnings.extend(_duplicate_warning(records))
    return warnings


def _duplicate_warning(records: list[Record]) -> list[str]:
    """Warn when identical examples sit in more than one split, which leaks training data into evaluation."""
    groups: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        content = r.image if r.image is not None else (r.text or "").encode()
        groups[hashlib.sha256(content).hexdigest()].append(r)
    leaked = [group for group in groups.values() if len({r.split for r in group}) > 1]
    if not leaked:
        return []
    example = " and ".join(f"{r.source} ({r.split})" for r in leaked[0][:2])
    count = f"{_plural(len(leaked), 'example')} {'appears' if len(leaked) == 1 else 'appear'}"
    return [f"{count} in more than one split (e.g. {example}); evaluation may be optimistic"]


def _plural(n: int, noun: str) -> str:
    """'1 example', '3 examples'."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


# --- images ----------------------------------------------------------------------------------------------------


def _parse_image_zip(data: bytes) -> tuple[list[Record], bool]:
    """Read a zip of class folders (optionally under train/val/test) into records with verified images."""
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise InvalidUpload("an image dataset must be a .zip of class folders, e.g. cat/001.jpg, dog/002.png")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidUpload(f"the zip archive is damaged ({exc}); re-create it and upload again") from exc
    with archive:
        infos = archive.infolist()
        _check_zip_limits(infos)
        files = [info for info in infos if not _is_ignored(info)]
        if not files:
            raise InvalidUpload("the archive contains no images; put them in one folder per class, e.g. cat/001.jpg")
        placed = _place_entries([info.filename for info in files])
        records = [
            Record(split=split or "train", label=label, image=_read_image(archive, info), source=info.filename)
            for info, (split, label) in zip(files, placed, strict=True)
        ]
    return records, any(split is not None for split, _ in placed)


def _check_zip_limits(infos: list[zipfile.ZipInfo]) -> None:
    """Refuse zip bombs and entries whose names would escape the archive."""
    if len(infos) > MAX_ZIP_ENTRIES:
        raise InvalidUpload(f"the archive has {len(infos)} entries; the limit is {MAX_ZIP_ENTRIES}")
    if sum(info.file_size for info in infos) > MAX_UNCOMPRESSED_BYTES:
        raise InvalidUpload("the archive expands to more than 2 GiB; upload a smaller dataset")
    for info in infos:
        name = info.filename
        if name.startswith("/") or re.match(r"[A-Za-z]:", name) or "\\" in name or ".." in name.split("/"):
            raise InvalidUpload(f'"{name}": path escapes the archive; use plain relative paths like cat/001.jpg')


def _is_ignored(info: zipfile.ZipInfo) -> bool:
    """Directories and OS clutter (macOS resource forks, hidden files, Windows thumbnails) are not data."""
    parts = info.filename.split("/")
    return (
        info.is_dir()
        or parts[0] == "__MACOSX"
        or any(p.startswith(".") for p in parts)
        or parts[-1].lower() in IGNORED_FILES
    )


def _place_entries(names: list[str]) -> list[tuple[str | None, str]]:
    """Work out (given split or None, class) for each file from the folder layout."""
    paths = [name.split("/") for name in names]
    tops = {p[0] for p in paths}
    if len(tops) == 1 and _split_name(paths[0][0]) is None and any(len(p) >= 3 for p in paths):
        paths = [p[1:] for p in paths]  # one common wrapper folder, e.g. pets/cat/001.jpg
    for name, parts in zip(names, paths, strict=True):
        if len(parts) == 1:
            raise InvalidUpload(
                f'"{name}" is not inside a class folder; images must be inside a folder named '
                "after their class, e.g. cat/001.jpg"
            )
    folders = {p[0] for p in paths}
    if "train" not in {_split_name(f) for f in folders}:
        return [_class_folder_entry(name, parts) for name, parts in zip(names, paths, strict=True)]
    others = sorted(f for f in folders if _split_name(f) is None)
    if others:
        raise InvalidUpload(
            f"the archive mixes split folders (train/) with other top-level folders ({', '.join(others)}/); "
            "put every class folder inside train/, val/ or test/"
        )
    return [_split_folder_entry(name, parts) for name, parts in zip(names, paths, strict=True)]


def _class_folder_entry(name: str, parts: list[str]) -> tuple[None, str]:
    """Layout A: <class>/<image>."""
    if len(parts) > 2:
        raise InvalidUpload(f'"{name}" is nested too deeply; {LAYOUT_HINT}')
    return None, parts[0]


def _split_folder_entry(name: str, parts: list[str]) -> tuple[str | None, str]:
    """Layout B: <split>/<class>/<image>."""
    if len(parts) == 2:
        raise InvalidUpload(f'"{name}" is not inside a class folder; put it in {parts[0]}/<class>/{parts[1]}')
    if len(parts) > 3:
        raise InvalidUpload(f'"{name}" is nested too deeply; {LAYOUT_HINT}')
    return _split_name(parts[0]), parts[1]


def _read_image(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """Extract one entry and prove it decodes fully as an image."""
    name = info.filename
    try:
        blob = archive.read(info)
    except Exception as exc:  # bad CRC, encryption, unsupported compression: all mean the same to the user
        raise InvalidUpload(f'"{name}" could not be extracted from the zip ({exc}); re-create the archive') from exc
    try:
        with pywarnings.catch_warnings():
            pywarnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(blob)) as img:
                img.load()  # verify() alone misses truncated pixel data
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidUpload(f'"{name}" has too many pixels to decode safely ({exc}); {IMAGE_HINT}') from exc
    except Exception as exc:
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, UnidentifiedImageError):
            reason = "cannot identify image file"  # PIL's own message embeds a BytesIO repr
        raise InvalidUpload(f'"{name}" is not a readable image ({reason}); {IMAGE_HINT}') from exc
    return blob


# --- text ------------------------------------------------------------------------------------------------------


def _parse_text(filename: str, data: bytes, text_column: str, label_column: str) -> tuple[list[Record], bool]:
    """Read a CSV or JSONL file into records; a split column, if used, must be set on every row."""
    content = _decode_utf8(data)
    suffix = PurePosixPath(filename).suffix.lower()
    is_jsonl = suffix in JSONL_SUFFIXES or (suffix != ".csv" and content.lstrip()[:1] == "{")
    read_rows = _jsonl_rows if is_jsonl else _csv_rows
    rows = list(read_rows(content, text_column, label_column))
    splits_given = any(split for _, _, _, split in rows)
    records = []
    for line, text, label, raw_split in rows:
        split = _split_name(raw_split or "")
        if splits_given and split is None:
            raise InvalidUpload(
                f"line {line}: split is '{raw_split or ''}'; use train, val or test on every row "
                "(or drop the split column to split automatically)"
            )
        records.append(Record(split=split or "train", label=label, text=text, source=f"line {line}"))
    return records, splits_given


def _decode_utf8(data: bytes) -> str:
    """Decode UTF-8 (a BOM is fine), pointing at the first bad byte otherwise."""
    bom = len(data) - len(data.removeprefix(b"\xef\xbb\xbf"))
    try:
        return data[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = bom + exc.start
        line = data.count(b"\n", 0, offset) + 1
        raise InvalidUpload(
            f"the file is not UTF-8: byte 0x{data[offset]:02X} at offset {offset} (line {line}) "
            "is not valid UTF-8; re-save the file as UTF-8 (e.g. 'CSV UTF-8' in Excel)"
        ) from exc


Row = tuple[int, str, str, str | None]  # line number, text, label, raw split


def _csv_rows(content: str, text_column: str, label_column: str) -> Iterable[Row]:
    """Yield checked rows of a CSV with a header line."""
    reader = csv.DictReader(io.StringIO(content, newline=""))
    try:
        if reader.fieldnames is None:
            return
        reader.fieldnames = [f.strip() for f in reader.fieldnames]
        for column, option in ((text_column, "text_column"), (label_column, "label_column")):
            if column not in reader.fieldnames:
                found = ", ".join(f"'{f}'" for f in reader.fieldnames)
                raise InvalidUpload(
                    f"the CSV has no '{column}' column (columns found: {found}); "
                    f"set the {option} option to the name of the right column"
                )
        for row in reader:
            text, label = row.get(text_column) or "", (row.get(label_column) or "").strip()
            _check_row(reader.line_num, text, label)
            yield reader.line_num, text, label, row.get("split")
    except csv.Error as exc:
        raise InvalidUpload(f"the CSV could not be parsed at line {reader.line_num} ({exc})") from exc


def _jsonl_rows(content: str, text_column: str, label_column: str) -> Iterable[Row]:
    """Yield checked rows of a JSON Lines file, one object per line."""
    # split("\n") rather than splitlines(): JSON strings may legally hold U+2028 and friends.
    for line, raw in enumerate(content.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            hint = "; upload JSON Lines (one object per line), not a JSON array" if raw.lstrip()[:1] == "[" else ""
            raise InvalidUpload(f"line {line} is not valid JSON ({exc.msg}){hint}") from exc
        if not isinstance(obj, dict):
            raise InvalidUpload(
                f"line {line} is not a JSON object; each line must look like "
                f'{{"{text_column}": "...", "{label_column}": "..."}}'
            )
        for key, option in ((text_column, "text_column"), (label_column, "label_column")):
            if key not in obj:
                found = ", ".join(f"'{k}'" for k in obj) or "none"
                raise InvalidUpload(
                    f"line {line} has no '{key}' key (keys found: {found}); "
                    f"set the {option} option to the name of the right key"
                )
        text, label, split = obj[text_column], obj[label_column], obj.get("split")
        if not isinstance(text, str):
            raise InvalidUpload(f"line {line}: '{text_column}' must be a string, not {type(text).__name__}")
        if not isinstance(label, str | int):
            kind = type(label).__name__
            raise InvalidUpload(f"line {line}: '{label_column}' must be a string or integer, not {kind}")
        if split is not None and not isinstance(split, str):
            raise InvalidUpload(f'line {line}: \'split\' must be one of "train", "val" or "test"')
        _check_row(line, text, str(label).strip())
        yield line, text, str(label).strip(), split


def _check_row(line: int, text: str, label: str) -> None:
    """Refuse rows with an empty text or label."""
    if not text.strip():
        raise InvalidUpload(f"line {line}: the text is empty")
    if not label:
        raise InvalidUpload(f"line {line}: the label is empty")
