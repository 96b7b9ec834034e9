"""Hostile files built cheaply in memory: a zip bomb, a PNG that declares a huge canvas, a zip whose header lies."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\nshowpage\n"


def huge_png(width: int, height: int) -> bytes:
    """A valid black-and-white PNG of width x height whose pixels are all zero: a few KiB of file for
    width x height pixels decoded (13000 x 13000 is 21 KiB for 169 megapixels)."""
    row = b"\x00" + bytes((width + 7) // 8)  # filter byte, then 1 bit per pixel
    pixels = zlib.compressobj(9)
    idat = b"".join(pixels.compress(row) for _ in range(height)) + pixels.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def zip_bomb(name: str, size: int, extra: dict[str, bytes] | None = None) -> bytes:
    """A real zip holding `name`: `size` zero bytes deflated about 1000:1 (1.5 GiB in 1.5 MiB), plus `extra`
    entries. Built from one 64 MiB deflate block repeated: each block ends in a full flush, so it stands alone."""
    block_size = 64 * 1024**2
    assert size % block_size == 0
    zeros = bytes(block_size)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    stream = block * (size // block_size) + b"\x03\x00"  # an empty final block ends the stream
    crc = 0
    for _ in range(size // block_size):
        crc = zlib.crc32(zeros, crc)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for entry, data in (extra or {}).items():
            zf.writestr(entry, data)
    head, central = _split_at_central_directory(buf.getvalue())
    encoded = name.encode()
    offset = len(head)
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, crc, len(stream), size, len(encoded), 0)
    record = struct.pack(
        "<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0x21, crc, len(stream), size, len(encoded), 0, 0, 0, 0,
        0, offset,
    )  # fmt: skip
    entries = len(extra or {}) + 1
    directory = central + record + encoded
    end = struct.pack(
        "<IHHHHIIH", 0x06054B50, 0, 0, entries, entries, len(directory), offset + len(local) + len(encoded) +
        len(stream), 0,
    )  # fmt: skip
    return head + local + encoded + stream + directory + end


def _split_at_central_directory(data: bytes) -> tuple[bytes, bytes]:
    """A zip's local entries and its central directory records (the end record dropped)."""
    (start,) = struct.unpack("<I", data[-6:-2])
    return data[:start], data[start:-22]


def with_declared_size(data: bytes, name: str, declared: int) -> bytes:
    """The zip `data` with the entry `name` claiming `declared` unpacked bytes in both of its headers."""
    out = bytearray(data)
    encoded = name.encode()
    for signature, size_at in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = out.find(signature)
        while at >= 0:
            name_at = at + (30 if signature == b"PK\x03\x04" else 46)
            if out[name_at : name_at + len(encoded)] == encoded:
                out[at + size_at : at + size_at + 4] = struct.pack("<I", declared)
            at = out.find(signature, at + 4)
    return bytes(out)
