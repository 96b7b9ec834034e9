"""A CSV or JSON Lines file read into records, every row that could be read two ways refused with its line."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import PurePosixPath
from typing import Any, NamedTuple

from app.datasets.labels import check_label, check_label_spellings, shown
from app.datasets.records import Record, plural, split_name
from app.errors import InvalidUpload
from app.input_limits import InputLimits

JSONL_SUFFIXES = {".jsonl", ".ndjson", ".json"}
# C0 controls other than tab, newline and carriage return, DEL, and the C1 controls (left by mis-decoded text).
TEXT_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def parse_text(
    filename: str, data: bytes, text_column: str, label_column: str | None, limits: InputLimits
) -> tuple[list[Record], bool]:
    """Read a CSV or JSONL file into records; a split column, if used, must be set on every row. Without a
    `label_column` (texts to score, POST /predictions) every record's label is ""."""
    if text_column == label_column:
        raise InvalidUpload(
            f"text_column and label_column are both '{shown(text_column)}'; the label would be part of the input. "
            "Name two different columns"
        )
    content = _decode_utf8(data)
    suffix = PurePosixPath(filename).suffix.lower()
    is_jsonl = suffix in JSONL_SUFFIXES or (suffix != ".csv" and content.lstrip()[:1] == "{")
    read_rows = _jsonl_rows if is_jsonl else _csv_rows
    rows = list(read_rows(content, text_column, label_column, limits))
    if label_column is not None:
        check_label_spellings((row.label, row.spelling, f"line {row.line}") for row in rows)
    splits_given = any(row.split for row in rows)
    records = []
    for row in rows:
        split = split_name(row.split or "")
        if splits_given and split is None:
            raise InvalidUpload(
                f"line {row.line}: split is '{shown(row.split or '')}'; use train, val or test on every row "
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


def _csv_rows(content: str, text_column: str, label_column: str | None, limits: InputLimits) -> Iterable[Row]:
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
                    f"line {reader.line_num} has {plural(given, 'field')} but the header has {width}; "
                    + (
                        'quote a text that contains commas ("like, this") or remove the extra fields'
                        if given > width
                        else "give every row a value for each column"
                    )
                )
            raw_label = (row[label_column] or "") if label_column is not None else ""
            text, label = row[text_column] or "", raw_label.strip()
            _check_row(reader.line_num, text, label if label_column is not None else None, limits)
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


def _check_header(fieldnames: list[str], text_column: str, label_column: str | None) -> None:
    """The text and label columns exist, and no column this service reads is named twice."""
    for column, option in _read_columns(text_column, label_column):
        if column not in fieldnames:
            found = ", ".join(f"'{shown(f)}'" for f in fieldnames[:50])
            raise InvalidUpload(
                f"the CSV has no '{shown(column)}' column (columns found: {found}); "
                f"set the {option} option to the name of the right column"
            )
    for column in (text_column, label_column or text_column, "split"):
        if fieldnames.count(column) > 1:
            raise InvalidUpload(f"the CSV header names the column '{shown(column)}' twice; rename or remove one")


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


def _read_columns(text_column: str, label_column: str | None) -> list[tuple[str, str]]:
    """The columns a file must have, each with the option that names it."""
    columns = [(text_column, "text_column")]
    return columns + [(label_column, "label_column")] if label_column is not None else columns


def _jsonl_rows(content: str, text_column: str, label_column: str | None, limits: InputLimits) -> Iterator[Row]:
    """Yield checked rows of a JSON Lines file, one object per line."""
    # split("\n") rather than splitlines(): JSON strings may legally hold U+2028 and friends.
    for line, raw in enumerate(content.split("\n"), start=1):
        if not raw.strip():
            continue
        obj = _json_line(line, raw)
        if not isinstance(obj, dict):
            example = ", ".join(f'"{shown(column)}": "..."' for column, _ in _read_columns(text_column, label_column))
            raise InvalidUpload(f"line {line} is not a JSON object; each line must look like {{{example}}}")
        for key, option in _read_columns(text_column, label_column):
            if key not in obj:
                found = ", ".join(f"'{shown(k)}'" for k in list(obj)[:50]) or "none"
                raise InvalidUpload(
                    f"line {line} has no '{shown(key)}' key (keys found: {found}); "
                    f"set the {option} option to the name of the right key"
                )
        text, split = obj[text_column], obj.get("split")
        if not isinstance(text, str):
            raise InvalidUpload(f"line {line}: '{shown(text_column)}' must be a string, not {_json_kind(text)}")
        label = _json_label(line, label_column, obj[label_column]) if label_column is not None else None
        if split is not None and not isinstance(split, str):
            raise InvalidUpload(f'line {line}: \'split\' must be one of "train", "val" or "test"')
        _check_row(line, text, label, limits)
        spelling = json.dumps(obj[label_column], ensure_ascii=False) if label_column is not None else ""
        yield Row(line, text, label or "", split, spelling)


def _json_line(line: int, raw: str) -> Any:
    """One line parsed; every way a hostile line can fail is an InvalidUpload naming the line."""
    try:
        return json.loads(raw, object_pairs_hook=_object_without_duplicate_keys)
    except _DuplicateKey as exc:
        raise InvalidUpload(f"line {line} has the key '{shown(exc.key)}' twice; keep one") from exc
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
        f"line {line}: '{shown(column)}' is {kind}; a label must be a string, a whole number or true/false"
    )


def _json_kind(value: Any) -> str:
    kinds = {dict: "an object", list: "a list", float: "a number", int: "a number", bool: "a boolean"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def _check_row(line: int, text: str, label: str | None, limits: InputLimits) -> None:
    """Refuse rows with an empty, too long or control-character text, or an empty, too long or control label
    (None: the file has no labels)."""
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
    if label is not None:
        check_label(f"line {line}", label)
