"""Caps on what one dataset upload or one /predict request may hold, checked before the expensive work."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.config import Settings

MAX_TEXT_CHARS = 100_000
MAX_TEXT_UPLOAD_MB = 256
MAX_IMAGE_PIXELS = 40_000_000
MAX_IMAGE_MB = 64
MAX_DATASET_MEGAPIXELS = 20_000
PREDICT_MAX_INPUTS = 256
PREDICT_MAX_MEGAPIXELS = 400
PREDICT_MAX_CHARS = 1_000_000


@dataclass(frozen=True)
class InputLimits:
    """The configured caps (FINETUNE_* settings of the same names); the defaults are the settings' defaults."""

    max_text_chars: int = MAX_TEXT_CHARS  # one text, in a dataset or a /predict request
    max_text_upload_mb: int = MAX_TEXT_UPLOAD_MB  # one CSV/JSONL upload (parsed in memory, unlike image zips)
    max_image_pixels: int = MAX_IMAGE_PIXELS  # one image, width x height, read from its header
    max_image_mb: int = MAX_IMAGE_MB  # one image file in a dataset zip, uncompressed
    max_dataset_megapixels: int = MAX_DATASET_MEGAPIXELS  # all images of one upload together
    predict_max_inputs: int = PREDICT_MAX_INPUTS  # texts or images in one /predict request
    predict_max_megapixels: int = PREDICT_MAX_MEGAPIXELS  # all images of one /predict request together
    predict_max_chars: int = PREDICT_MAX_CHARS  # all texts of one /predict request together (tokenizing costs time)

    @classmethod
    def from_settings(cls, settings: Settings) -> InputLimits:
        return cls(
            max_text_chars=settings.max_text_chars,
            max_text_upload_mb=settings.max_text_upload_mb,
            max_image_pixels=settings.max_image_pixels,
            max_image_mb=settings.max_image_mb,
            max_dataset_megapixels=settings.max_dataset_megapixels,
            predict_max_inputs=settings.predict_max_inputs,
            predict_max_megapixels=settings.predict_max_megapixels,
            predict_max_chars=settings.predict_max_chars,
        )

    @property
    def max_image_bytes(self) -> int:
        return self.max_image_mb * 1024 * 1024
