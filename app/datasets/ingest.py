"""Parse an uploaded dataset (a zip of class folders, or a CSV/JSONL file) into labelled, split records."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import re
import unicodedata
import zipfile
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import PurePosixPath
from typing import Any, NamedTuple

from app.errors import InvalidUpload
from app.image_files import SNIFF_BYTES, ImageRefused, image_pixels, load_image, sniff
from app.input_limits import InputLimits
from app.tasktypes.types import TaskType

SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
HOLDOUT_FRACTION = 0.1
MAX_UNCOMPRESSED_BYTES = 2 * 1024**3
MAX_ZIP_ENTRIES = 200_000
# Entries above RATIO_FLOOR_BYTES unpacked may be compressed at most MAX_COMPRESSION_RATIO:1: images are already
# compressed (PNG, JPEG...), so a higher ratio is a bomb or an uncompressed BMP/TIFF that should be a PNG.
MAX_COMPRESSION_RATIO = 100
RATIO_FLOOR_BYTES = 1024 * 1024
READ_CHUNK_BYTES = 1024 * 1024
MAX_LABEL_CHARS = 200
SHOWN_CHARS = 120  # longest name or spelling quoted back in a message
IGNORED_FILES = {"thumbs.db", "desktop.ini"}
MIN_CLASS_EXAMPLES = 10
MAX_IMBALANCE = 10
JSONL_SUFFIXES = {".jsonl", ".ndjson", ".json"}
LAYOUT_HINT = "expected <class>/<image> or train|val|test/<class>/<image>"
# C0 controls other than tab, newline and carriage return, DEL, and the C1 controls (left by mis-decoded text).
TEXT_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
LABEL_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # labels take no tab or line break either
# what is escaped when a name is quoted back: controls, zero-width and bidirectional-override characters
INVISIBLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


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
    limits: InputLimits | None = None,
) -> ParsedDataset:
    """Validate an upload, split it if needed and report counts and warnings; raise InvalidUpload on user errors
    (and on anything over `limits`, the configured caps; default: the settings' defaults)."""
    limits = limits or InputLimits()
    if task == TaskType.image_classification:
        records, splits_given = _parse_image_zip(data, limits)
    else:
        records, splits_given = _parse_text(filename, data, text_column, label_column, limits)
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
    """Warn about identical examples: across splits they leak training data into evaluation; within one split
    they weigh more in training (or in the metrics) than the rest."""
    groups: dict[str, list[Record]] = defaultdict(list)
    for r in records:
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
    return f"{_plural(n, 'example')} {'appears' if n == 1 else 'appear'}"


def _plural(n: int, noun: str) -> str:
    """'1 example', '3 examples'."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


# --- images ----------------------------------------------------------------------------------------------------


def _parse_image_zip(data: bytes, limits: InputLimits) -> tuple[list[Record], bool]:
    """Read a zip of class folders (optionally under train/val/test) into records with verified images."""
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise InvalidUpload("an image dataset must be a .zip of class folders, e.g. cat/001.jpg, dog/002.png")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidUpload(f"the zip archive is damaged ({_brief(exc)}); re-create it and upload again") from exc
    with archive:
        infos = archive.infolist()
        _check_zip_limits(infos, limits)
        files = [info for info in infos if not _is_ignored(info)]
        if not files:
            raise InvalidUpload("the archive contains no images; put them in one folder per class, e.g. cat/001.jpg")
        placed = _place_entries([info.filename for info in files])
        for info, (_, label) in zip(files, placed, strict=True):
            _check_label(f'"{_shown(info.filename)}"', label)
        _check_label_spellings(
            (label, json.dumps(label, ensure_ascii=False), f'"{_shown(info.filename)}"')
            for info, (_, label) in zip(files, placed, strict=True)
        )
        pixels = _PixelBudget(limits.max_dataset_megapixels)
        records = [
            Record(
                split=split or "train",
                label=label,
                image=_read_image(archive, info, limits, pixels),
                source=_shown(info.filename),
            )
            for info, (split, label) in zip(files, placed, strict=True)
        ]
    return records, any(split is not None for split, _ in placed)


def _check_zip_limits(infos: list[zipfile.ZipInfo], limits: InputLimits) -> None:
    """Refuse zip bombs and entries whose names would escape the archive, from the central directory alone:
    nothing is decompressed before every entry's declared size and compression ratio are known to be sane."""
    if len(infos) > MAX_ZIP_ENTRIES:
        raise InvalidUpload(f"the archive has {len(infos)} entries; the limit is {MAX_ZIP_ENTRIES}")
    if sum(info.file_size for info in infos) > MAX_UNCOMPRESSED_BYTES:
        raise InvalidUpload("the archive expands to more than 2 GiB; upload a smaller dataset")
    for info in infos:
        name = info.filename
        if name.startswith("/") or re.match(r"[A-Za-z]:", name) or "\\" in name or ".." in name.split("/"):
            raise InvalidUpload(
                f'"{_shown(name)}": path escapes the archive; use plain relative paths like cat/001.jpg'
            )
    for info in infos:
        if not _is_ignored(info):
            _check_entry_size(info, limits)


def _check_entry_size(info: zipfile.ZipInfo, limits: InputLimits) -> None:
    """One entry's declared unpacked size against the per-image cap, and its compression ratio."""
    name, size = _shown(info.filename), info.file_size
    if size > limits.max_image_bytes:
        raise InvalidUpload(
            f'"{name}" unpacks to {_mib(size)}; an image file may be at most {limits.max_image_mb} MiB '
            "(FINETUNE_MAX_IMAGE_MB); downscale it or save it as JPEG/PNG"
        )
    if size > RATIO_FLOOR_BYTES and size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
        raise InvalidUpload(
            f'"{name}" unpacks from {_mib(info.compress_size)} to {_mib(size)}, more than '
            f"{MAX_COMPRESSION_RATIO}:1; entries over {_mib(RATIO_FLOOR_BYTES)} may be compressed at most "
            f"{MAX_COMPRESSION_RATIO}:1 (images are already compressed); save it as JPEG/PNG"
        )


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
                f'"{_shown(name)}" is not inside a class folder; images must be inside a folder named '
                "after their class, e.g. cat/001.jpg"
            )
    folders = {p[0] for p in paths}
    if "train" not in {_split_name(f) for f in folders}:
        return [_class_folder_entry(name, parts) for name, parts in zip(names, paths, strict=True)]
    others = sorted(f for f in folders if _split_name(f) is None)
    if others:
        shown = ", ".join(f"{_shown(f)}/" for f in others[:5]) + (", ..." if len(others) > 5 else "")
        raise InvalidUpload(
            f"the archive mixes split folders (train/) with other top-level folders ({shown}); "
            "put every class folder inside train/, val/ or test/"
        )
    return [_split_folder_entry(name, parts) for name, parts in zip(names, paths, strict=True)]


def _class_folder_entry(name: str, parts: list[str]) -> tuple[None, str]:
    """Layout A: <class>/<image>."""
    if len(parts) > 2:
        raise InvalidUpload(f'"{_shown(name)}" is nested too deeply; {LAYOUT_HINT}')
    return None, parts[0]


def _split_folder_entry(name: str, parts: list[str]) -> tuple[str | None, str]:
    """Layout B: <split>/<class>/<image>."""
    if len(parts) == 2:
        raise InvalidUpload(
            f'"{_shown(name)}" is not inside a class folder; put it in {_shown(parts[0])}/<class>/{_shown(parts[1])}'
        )
    if len(parts) > 3:
        raise InvalidUpload(f'"{_shown(name)}" is nested too deeply; {LAYOUT_HINT}')
    return _split_name(parts[0]), parts[1]


class _PixelBudget:
    """The pixels of an upload's images so far, against the cap on their total (decoding costs time)."""

    def __init__(self, megapixels: int) -> None:
        self.left = megapixels * 1_000_000
        self.megapixels = megapixels

    def spend(self, name: str, pixels: int) -> None:
        self.left -= pixels
        if self.left < 0:
            raise InvalidUpload(
                f'at "{name}", the images hold more than {self.megapixels:,} megapixels in all '
                "(FINETUNE_MAX_DATASET_MEGAPIXELS); downscale them (the training size is far smaller) or upload fewer"
            )


def _read_image(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limits: InputLimits, pixels: _PixelBudget) -> bytes:
    """Extract one entry and prove it is an allowed image under the caps that decodes fully."""
    name = _shown(info.filename)
    try:
        blob = _read_entry(archive, info)
        img = load_image(blob, max_pixels=limits.max_image_pixels)
        pixels.spend(name, image_pixels(img))
        img.close()
    except ImageRefused as exc:
        raise InvalidUpload(f'"{name}" {exc.reason}') from exc
    return blob


def _read_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """An entry's bytes, sniffed from its first bytes before the rest is read, in bounded chunks that never go
    past its declared size (checked against the caps already), whatever its compressed stream holds."""
    name = _shown(info.filename)
    chunks, total = [], 0
    try:
        with archive.open(info) as stream:
            head = stream.read(SNIFF_BYTES)
            sniff(head)
            chunks.append(head)
            total = len(head)
            while chunk := stream.read(min(READ_CHUNK_BYTES, info.file_size - total + 1)):
                total += len(chunk)
                if total > info.file_size:
                    raise InvalidUpload(f'"{name}" holds more data than the archive declares; re-create the archive')
                chunks.append(chunk)
    except (ImageRefused, InvalidUpload):
        raise
    except RuntimeError as exc:  # zipfile's "is encrypted, password required" (its message holds a repr)
        raise InvalidUpload(f'"{name}" is encrypted; zip the images without a password') from exc
    except NotImplementedError as exc:
        raise InvalidUpload(f'"{name}" uses a compression method this service does not read; use deflate') from exc
    except Exception as exc:  # bad CRC, damaged stream: all mean the same to the user
        raise InvalidUpload(
            f'"{name}" could not be extracted from the zip ({_brief(exc)}); re-create the archive'
        ) from exc
    return b"".join(chunks)


def _mib(size: int) -> str:
    return f"{size / 1024**2:,.1f} MiB" if size >= 1024**2 else f"{size / 1024:,.1f} KiB"


def _shown(value: str) -> str:
    """A name or spelling as quoted back in a message: invisible and control characters escaped, bounded."""
    escaped = INVISIBLE.sub(lambda m: f"\\u{ord(m.group()):04x}", value)
    return escaped if len(escaped) <= SHOWN_CHARS else escaped[:SHOWN_CHARS] + "..."


def _brief(exc: Exception) -> str:
    """An exception's message without reprs, bounded."""
    return _shown(re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "the entry", str(exc)) or type(exc).__name__)


# --- text ------------------------------------------------------------------------------------------------------


def _parse_text(
    filename: str, data: bytes, text_column: str, label_column: str, limits: InputLimits
) -> tuple[list[Record], bool]:
    """Read a CSV or JSONL file into records; a split column, if used, must be set on every row."""
    if text_column == label_column:
        raise InvalidUpload(
            f"text_column and label_column are both '{_shown(text_column)}'; the label would be part of the input. "
            "Name two different columns"
        )
    content = _decode_utf8(data)
    suffix = PurePosixPath(filename).suffix.lower()
    is_jsonl = suffix in JSONL_SUFFIXES or (suffix != ".csv" and content.lstrip()[:1] == "{")
    read_rows = _jsonl_rows if is_jsonl else _csv_rows
    rows = list(read_rows(content, text_column, label_column, limits))
    _check_label_spellings((row.label, row.spelling, f"line {row.line}") for row in rows)
    splits_given = any(row.split for row in rows)
    records = []
    for row in rows:
        split = _split_name(row.split or "")
        if splits_given and split is None:
            raise InvalidUpload(
                f"line {row.line}: split is '{_shown(row.split or '')}'; use train, val or test on every row "
                "(or drop the split column to split automatically)"
            )
        records.append(Record(split=split or "train", label=row.label, text=row.text, source=f"line {row.line}"))
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


class Row(NamedTuple):
    line: int
    text: str
    label: str  # as stored: stripped, numbers and booleans written as JSON writes them
    split: str | None  # as given
    spelling: str  # the label exactly as the file wrote it (JSON-quoted), to spot classes spelled two ways


def _csv_rows(content: str, text_column: str, label_column: str, limits: InputLimits) -> Iterable[Row]:
    """Yield checked rows of a CSV with a header line; a row with more or fewer fields than the header is refused."""
    reader = csv.DictReader(io.StringIO(content, newline=""))
    try:
        if reader.fieldnames is None:
            return
        reader.fieldnames = [f.strip() for f in reader.fieldnames]
        _check_header(reader.fieldnames, text_column, label_column)
        width = len(reader.fieldnames)
        for row in reader:
            given = width + len(row.get(None) or []) if None in row else sum(v is not None for v in row.values())
            if given != width:
                raise InvalidUpload(
                    f"line {reader.line_num} has {_plural(given, 'field')} but the header has {width}; "
                    + (
                        'quote a text that contains commas ("like, this") or remove the extra fields'
                        if given > width
                        else "give every row a value for each column"
                    )
                )
            raw_label = row[label_column] or ""
            text, label = row[text_column] or "", raw_label.strip()
            _check_row(reader.line_num, text, label, limits)
            yield Row(reader.line_num, text, label, row.get("split"), json.dumps(raw_label, ensure_ascii=False))
    except csv.Error as exc:
        detail = str(exc)
        if "field larger than field limit" in detail:
            detail = (
                f"a field is longer than {csv.field_size_limit():,} characters; a text may have at most "
                f"{limits.max_text_chars:,} (FINETUNE_MAX_TEXT_CHARS)"
            )
        # reader.reader: the DictReader's own line_num lags behind a row that failed to parse
        raise InvalidUpload(f"the CSV could not be parsed at line {reader.reader.line_num} ({detail})") from exc


def _check_header(fieldnames: list[str], text_column: str, label_column: str) -> None:
    """The text and label columns exist, and no column this service reads is named twice."""
    for column, option in ((text_column, "text_column"), (label_column, "label_column")):
        if column not in fieldnames:
            found = ", ".join(f"'{_shown(f)}'" for f in fieldnames[:50])
            raise InvalidUpload(
                f"the CSV has no '{_shown(column)}' column (columns found: {found}); "
                f"set the {option} option to the name of the right column"
            )
    for column in (text_column, label_column, "split"):
        if fieldnames.count(column) > 1:
            raise InvalidUpload(f"the CSV header names the column '{_shown(column)}' twice; rename or remove one")


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _object_without_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json.loads keeps the last of two equal keys silently; refuse them instead."""
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen.add(key)
    return dict(pairs)


def _jsonl_rows(content: str, text_column: str, label_column: str, limits: InputLimits) -> Iterator[Row]:
    """Yield checked rows of a JSON Lines file, one object per line."""
    # split("\n") rather than splitlines(): JSON strings may legally hold U+2028 and friends.
    for line, raw in enumerate(content.split("\n"), start=1):
        if not raw.strip():
            continue
        obj = _json_line(line, raw)
        if not isinstance(obj, dict):
            raise InvalidUpload(
                f"line {line} is not a JSON object; each line must look like "
                f'{{"{_shown(text_column)}": "...", "{_shown(label_column)}": "..."}}'
            )
        for key, option in ((text_column, "text_column"), (label_column, "label_column")):
            if key not in obj:
                found = ", ".join(f"'{_shown(k)}'" for k in list(obj)[:50]) or "none"
                raise InvalidUpload(
                    f"line {line} has no '{_shown(key)}' key (keys found: {found}); "
                    f"set the {option} option to the name of the right key"
                )
        text, split = obj[text_column], obj.get("split")
        if not isinstance(text, str):
            raise InvalidUpload(f"line {line}: '{_shown(text_column)}' must be a string, not {_json_kind(text)}")
        label = _json_label(line, label_column, obj[label_column])
        if split is not None and not isinstance(split, str):
            raise InvalidUpload(f'line {line}: \'split\' must be one of "train", "val" or "test"')
        _check_row(line, text, label, limits)
        yield Row(line, text, label, split, json.dumps(obj[label_column], ensure_ascii=False))


def _json_line(line: int, raw: str) -> Any:
    """One line parsed; every way a hostile line can fail is an InvalidUpload naming the line."""
    try:
        return json.loads(raw, object_pairs_hook=_object_without_duplicate_keys)
    except _DuplicateKey as exc:
        raise InvalidUpload(f"line {line} has the key '{_shown(exc.key)}' twice; keep one") from exc
    except json.JSONDecodeError as exc:
        hint = "; upload JSON Lines (one object per line), not a JSON array" if raw.lstrip()[:1] == "[" else ""
        raise InvalidUpload(f"line {line} is not valid JSON ({exc.msg}){hint}") from exc
    except RecursionError as exc:
        raise InvalidUpload(f"line {line} nests too deeply; each line must be one flat JSON object") from exc
    except ValueError as exc:  # an integer of thousands of digits
        raise InvalidUpload(f"line {line} holds a number too long to read; write it as a string") from exc


def _json_label(line: int, column: str, value: Any) -> str:
    """A JSON label as stored: strings stripped, whole numbers and booleans as JSON writes them (1, true).
    Fractions, null, lists and objects are refused: which class they would be is anyone's guess."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    kind = "a number with a fraction" if isinstance(value, float) else _json_kind(value)
    raise InvalidUpload(
        f"line {line}: '{_shown(column)}' is {kind}; a label must be a string, a whole number or true/false"
    )


def _json_kind(value: Any) -> str:
    kinds = {dict: "an object", list: "a list", float: "a number", int: "a number", bool: "a boolean"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def _check_row(line: int, text: str, label: str, limits: InputLimits) -> None:
    """Refuse rows with an empty, too long or control-character text, or an empty, too long or control label."""
    if not text.strip():
        raise InvalidUpload(f"line {line}: the text is empty")
    if len(text) > limits.max_text_chars:
        raise InvalidUpload(
            f"line {line}: the text has {len(text):,} characters; the limit is {limits.max_text_chars:,} "
            "(FINETUNE_MAX_TEXT_CHARS); shorten or split it"
        )
    if control := TEXT_CONTROLS.search(text):
        raise InvalidUpload(
            f"line {line}: the text holds the control character U+{ord(control.group()):04X} at character "
            f"{control.start() + 1}; remove it (tabs and line breaks are fine)"
        )
    _check_label(f"line {line}", label)


def _check_label(where: str, label: str) -> None:
    """A label is non-empty, short and free of control characters (tabs and line breaks included)."""
    if not label:
        raise InvalidUpload(f"{where}: the label is empty")
    if len(label) > MAX_LABEL_CHARS:
        raise InvalidUpload(
            f"{where}: the label has {len(label):,} characters; a label may have at most {MAX_LABEL_CHARS}"
        )
    if control := LABEL_CONTROLS.search(label):
        raise InvalidUpload(f"{where}: the label holds the control character U+{ord(control.group()):04X}; remove it")


def _check_label_spellings(labels: Iterable[tuple[str, str, str]]) -> None:
    """Refuse two spellings of what reads as one class: case, spaces, quotes, 1 vs "1" vs 1.0, true vs 1.

    `labels` holds (label as stored, spelling as written, where); the first spelling of each class is kept."""
    first: dict[str, tuple[str, str]] = {}  # normalised -> (spelling, where)
    for label, spelling, where in labels:
        key = _label_key(label)
        seen = first.setdefault(key, (spelling, where))
        if seen[0] != spelling:
            raise InvalidUpload(
                f"{where}: the label {_shown(spelling)} and {_shown(seen[0])} ({seen[1]}) would be read as the "
                "same class (they differ only in case, spaces, quotes, or how a number or true/false is "
                "written); spell each class one way"
            )


def _label_key(label: str) -> str:
    """What a label means, for spotting two spellings of one class: "True", " true", "'true'" and "1" agree."""
    key = " ".join(unicodedata.normalize("NFKC", label).strip().strip("\"'").split()).casefold()
    key = {"true": "1", "false": "0", "yes": "1", "no": "0"}.get(key, key)
    try:
        number = Decimal(key).normalize()
    except ArithmeticError:  # not a number (InvalidOperation), or one beyond Decimal's exponents
        return key
    return str(number) if number.is_finite() else key
