"""A zip of class folders (optionally under train/val/test) read into records of verified images, every entry's
declared size and compression ratio checked before anything is unpacked."""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from typing import BinaryIO

from app.datasets.labels import check_label, check_label_spellings, shown
from app.datasets.records import Record, split_name
from app.errors import InvalidUpload
from app.image_files import SNIFF_BYTES, ImageRefused, image_pixels, load_image, sniff
from app.input_limits import InputLimits

MAX_UNCOMPRESSED_BYTES = 2 * 1024**3
MAX_ZIP_ENTRIES = 200_000
# Entries above RATIO_FLOOR_BYTES unpacked may be compressed at most MAX_COMPRESSION_RATIO:1: images are already
# compressed (PNG, JPEG...), so a higher ratio is a bomb or an uncompressed BMP/TIFF that should be a PNG.
MAX_COMPRESSION_RATIO = 100
RATIO_FLOOR_BYTES = 1024 * 1024
READ_CHUNK_BYTES = 1024 * 1024
IGNORED_FILES = {"thumbs.db", "desktop.ini"}
LAYOUT_HINT = "expected <class>/<image> or train|val|test/<class>/<image>"


def parse_image_zip(data: bytes | BinaryIO, limits: InputLimits) -> tuple[list[Record], bool, zipfile.ZipFile]:
    """Read a zip of class folders (optionally under train/val/test) into records of verified images.

    The images stay in the upload: each record names its entry (`member`), and the archive is returned open, so
    an upload of any size is checked one image at a time in bounded memory."""
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    if not zipfile.is_zipfile(source):
        raise InvalidUpload("an image dataset must be a .zip of class folders, e.g. cat/001.jpg, dog/002.png")
    source.seek(0)
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidUpload(f"the zip archive is damaged ({_brief(exc)}); re-create it and upload again") from exc
    try:
        records, splits_given = _records(archive, limits)
    except BaseException:
        archive.close()
        raise
    return records, splits_given, archive


def _records(archive: zipfile.ZipFile, limits: InputLimits) -> tuple[list[Record], bool]:
    """The archive's entries, checked, as records naming their entries."""
    infos = archive.infolist()
    _check_zip_limits(infos, limits)
    files = [info for info in infos if not _is_ignored(info)]
    if not files:
        raise InvalidUpload("the archive contains no images; put them in one folder per class, e.g. cat/001.jpg")
    placed = _place_entries([info.filename for info in files])
    for info, (_, label) in zip(files, placed, strict=True):
        check_label(f'"{shown(info.filename)}"', label)
    check_label_spellings(
        (label, json.dumps(label, ensure_ascii=False), f'"{shown(info.filename)}"')
        for info, (_, label) in zip(files, placed, strict=True)
    )
    pixels = _PixelBudget(limits.max_dataset_megapixels)
    records = [
        Record(
            split=split or "train",
            label=label,
            source=shown(info.filename),
            member=info.filename,
            digest=_check_image(archive, info, limits, pixels),
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
            raise InvalidUpload(f'"{shown(name)}": path escapes the archive; use plain relative paths like cat/001.jpg')
    for info in infos:
        if not _is_ignored(info):
            _check_entry_size(info, limits)


def _check_entry_size(info: zipfile.ZipInfo, limits: InputLimits) -> None:
    """One entry's declared unpacked size against the per-image cap, and its compression ratio."""
    name, size = shown(info.filename), info.file_size
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
    if len(tops) == 1 and split_name(paths[0][0]) is None and any(len(p) >= 3 for p in paths):
        paths = [p[1:] for p in paths]  # one common wrapper folder, e.g. pets/cat/001.jpg
    for name, parts in zip(names, paths, strict=True):
        if len(parts) == 1:
            raise InvalidUpload(
                f'"{shown(name)}" is not inside a class folder; images must be inside a folder named '
                "after their class, e.g. cat/001.jpg"
            )
    folders = {p[0] for p in paths}
    if "train" not in {split_name(f) for f in folders}:
        return [_class_folder_entry(name, parts) for name, parts in zip(names, paths, strict=True)]
    others = sorted(f for f in folders if split_name(f) is None)
    if others:
        listed = ", ".join(f"{shown(f)}/" for f in others[:5]) + (", ..." if len(others) > 5 else "")
        raise InvalidUpload(
            f"the archive mixes split folders (train/) with other top-level folders ({listed}); "
            "put every class folder inside train/, val/ or test/"
        )
    return [_split_folder_entry(name, parts) for name, parts in zip(names, paths, strict=True)]


def _class_folder_entry(name: str, parts: list[str]) -> tuple[None, str]:
    """Layout A: <class>/<image>."""
    if len(parts) > 2:
        raise InvalidUpload(f'"{shown(name)}" is nested too deeply; {LAYOUT_HINT}')
    return None, parts[0]


def _split_folder_entry(name: str, parts: list[str]) -> tuple[str | None, str]:
    """Layout B: <split>/<class>/<image>."""
    if len(parts) == 2:
        raise InvalidUpload(
            f'"{shown(name)}" is not inside a class folder; put it in {shown(parts[0])}/<class>/{shown(parts[1])}'
        )
    if len(parts) > 3:
        raise InvalidUpload(f'"{shown(name)}" is nested too deeply; {LAYOUT_HINT}')
    return split_name(parts[0]), parts[1]


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


def _check_image(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limits: InputLimits, pixels: _PixelBudget) -> str:
    """Extract one entry and prove it is an allowed image under the caps that decodes fully; its sha256."""
    name = shown(info.filename)
    try:
        blob = _read_entry(archive, info)
        img = load_image(blob, max_pixels=limits.max_image_pixels)
        pixels.spend(name, image_pixels(img))
        img.close()
    except ImageRefused as exc:
        raise InvalidUpload(f'"{name}" {exc.reason}') from exc
    return hashlib.sha256(blob).hexdigest()


def _read_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """An entry's bytes, sniffed from its first bytes before the rest is read, in bounded chunks that never go
    past its declared size (checked against the caps already), whatever its compressed stream holds."""
    name = shown(info.filename)
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


def _brief(exc: Exception) -> str:
    """An exception's message without reprs, bounded."""
    return shown(re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "the entry", str(exc)) or type(exc).__name__)
