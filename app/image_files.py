"""Opening untrusted image bytes: a format allow-list (never Ghostscript's EPS/PS/PDF) sniffed from the first bytes,
and a pixel cap read from the header before a single pixel is decoded. Datasets, /predict and training all open
images here."""

from __future__ import annotations

import io
import re
import warnings

from PIL import Image, UnidentifiedImageError

# Pillow is offered only the plugin of the format sniffed among these, so EPS (Ghostscript), PDF, ICO, PSD... are
# never even attempted.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
FORMAT_NAMES = "JPEG, PNG, WebP, BMP, GIF or TIFF"
# Pillow reports a multi-picture JPEG (phone cameras' MPO) as "MPO"; it is a JPEG file.
OPENED_FORMATS = {*ALLOWED_FORMATS, "MPO"}
SNIFF_BYTES = 16  # enough for every signature below

# Pillow warns (once per call site, on stderr) above Image.MAX_IMAGE_PIXELS and raises above twice that. The pixel
# cap below is checked explicitly (40 megapixels by default, under Pillow's 89), so the warning only adds noise for
# images that are refused anyway; the error stays as the backstop where no cap is given.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),  # BigTIFF
    (b"MM\x00+", "TIFF"),
)
# Things people put in image folders by mistake, named so the detail says what was found.
NOT_IMAGES: tuple[tuple[bytes, str], ...] = (
    (b"PK\x03\x04", "a zip archive (nested archives are not accepted; unpack it into the class folders)"),
    (b"PK\x05\x06", "a zip archive (nested archives are not accepted; unpack it into the class folders)"),
    (b"\x1f\x8b", "a gzip archive (nested archives are not accepted)"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive (nested archives are not accepted)"),
    (b"Rar!", "a RAR archive (nested archives are not accepted)"),
    (b"BZh", "a bzip2 archive (nested archives are not accepted)"),
    (b"\xfd7zXZ\x00", "an xz archive (nested archives are not accepted)"),
    (b"%PDF", "a PDF document"),
    (b"%!PS", "a PostScript/EPS file"),
    (b"\xc5\xd0\xd3\xc6", "a PostScript/EPS file"),
)


class ImageRefused(ValueError):
    """An image that is not accepted; the reason says why and what to do, without naming the image (the caller
    says which entry or index it was)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def sniff(head: bytes) -> str:
    """The allowed format a file's first bytes announce; ImageRefused for anything else (empty, text, archives)."""
    if not head:
        raise ImageRefused(f"is empty; {_replace_hint()}")
    for signature, name in SIGNATURES:
        if head.startswith(signature):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    for signature, what in NOT_IMAGES:
        if head.startswith(signature):
            raise ImageRefused(f"is {what}, not an image; {_replace_hint()}")
    raise ImageRefused(f"is not a {FORMAT_NAMES} image; {_replace_hint()}")


def open_image(data: bytes, *, max_pixels: int | None = None) -> Image.Image:
    """The image, opened lazily (header parsed, no pixel decoded) after its format and pixel count are checked.

    With `max_pixels`, an image of more pixels is refused from its header. Without it, Pillow's own
    decompression-bomb limit (Image.MAX_IMAGE_PIXELS, twice of which raises) still applies."""
    kind = sniff(data[:SNIFF_BYTES])
    try:
        # Only the plugin of the sniffed format is offered: an allowed signature on another kind of file fails
        # here instead of reaching any other plugin.
        img = Image.open(io.BytesIO(data), formats=(kind,))
    except KeyError as exc:  # Pillow built without this format's library (libwebp...)
        raise ImageRefused(f"is a {kind} image, which this server cannot read; {_replace_hint()}") from exc
    except Image.DecompressionBombError as exc:
        raise ImageRefused(f"has too many pixels to open safely; {_pixel_hint(max_pixels)}") from exc
    except Exception as exc:  # any parse failure of a hostile header means the same to the user
        raise ImageRefused(f"is not a readable image ({_reason(exc)}); {_replace_hint()}") from exc
    if img.format not in OPENED_FORMATS:  # cannot happen with `formats=`, kept as the allow-list's last word
        img.close()
        raise ImageRefused(f"is a {img.format} file; {_replace_hint()}")
    width, height = img.size
    if max_pixels is not None and width * height > max_pixels:
        img.close()
        raise ImageRefused(
            f"has too many pixels: {width}x{height} ({width * height / 1e6:.1f} megapixels); {_pixel_hint(max_pixels)}"
        )
    return img


def load_image(data: bytes, *, max_pixels: int | None = None) -> Image.Image:
    """The image fully decoded (truncated pixel data is caught here, which opening alone misses)."""
    img = open_image(data, max_pixels=max_pixels)
    try:
        img.load()
    except Image.DecompressionBombError as exc:  # a frame larger than the header said
        raise ImageRefused(f"has too many pixels to decode safely; {_pixel_hint(max_pixels)}") from exc
    except Exception as exc:
        raise ImageRefused(f"is not a readable image ({_reason(exc)}); {_replace_hint()}") from exc
    return img


def image_pixels(img: Image.Image) -> int:
    width, height = img.size
    return int(width * height)


def _reason(exc: Exception) -> str:
    """Pillow's message without reprs (its 'cannot identify' message embeds a BytesIO repr), bounded."""
    if isinstance(exc, UnidentifiedImageError):
        return "cannot identify image file"
    text = re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "the file", str(exc)).strip() or type(exc).__name__
    return text[:200]


def _pixel_hint(max_pixels: int | None) -> str:
    if max_pixels is None:
        return "downscale it"
    return f"the limit is {max_pixels / 1e6:g} megapixels per image (FINETUNE_MAX_IMAGE_PIXELS); downscale it"


def _replace_hint() -> str:
    return f"remove it or replace it with a {FORMAT_NAMES} image"
