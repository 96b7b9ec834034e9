"""Image classification: decode once to uint8 tensors, normalise per batch, AutoModelForImageClassification."""

from __future__ import annotations

import copy
import inspect
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification, PreTrainedModel

from app.image_files import open_image
from app.tasktypes.common import Preprocessing, load_with_new_head

DEFAULT_IMAGE_SIZE = 224


def load_model(
    path: Path, labels: list[str], dropout: float | None, prep: Preprocessing | None = None
) -> tuple[PreTrainedModel, set[str], list[str]]:
    """The base model with a new head; returns (model, fresh param names, notes for the job's events). With `prep`,
    records in it whether the model must interpolate its position embeddings for `prep.image_size`."""
    overrides: dict[str, Any] = {}
    notes: list[str] = []
    if dropout is not None:
        config = AutoConfig.from_pretrained(str(path))
        if config.model_type == "timm_wrapper":
            overrides["model_args"] = {**(getattr(config, "model_args", None) or {}), "drop_rate": dropout}
        elif hasattr(config, "classifier_dropout"):
            overrides["classifier_dropout"] = dropout
        else:
            notes.append(f"{config.model_type} has no classifier dropout; 'dropout' was ignored")
    model, fresh = load_with_new_head(AutoModelForImageClassification, path, labels, **overrides)
    if model.config.model_type == "timm_wrapper":
        # its config saves `label_names`, and keeps the base model's (ImageNet's) unless told the new ones
        model.config.label_names = list(labels)
    if prep is not None:
        prep.interpolate_pos_encoding = needs_interpolated_positions(model, prep.image_size)
    return model, fresh, notes


def needs_interpolated_positions(model: torch.nn.Module, side: int | None) -> bool:
    """Whether a model with learned position embeddings (ViT, DeiT, BEiT...) is fed another size than it was
    pretrained at: its forward then interpolates them (`interpolate_pos_encoding=True`) instead of failing.
    Convolutional models take any size as they are."""
    native = getattr(model.config, "image_size", None)
    native = native[0] if isinstance(native, list | tuple) else native
    accepts = "interpolate_pos_encoding" in inspect.signature(model.forward).parameters
    return bool(accepts and side and native and side != native)


def load_processor(path: Path) -> Any:
    return AutoImageProcessor.from_pretrained(str(path))


def _processor_stats(processor: Any) -> tuple[int | None, list[float] | None, list[float] | None]:
    """Image size, mean and std a processor uses (HF processors and the timm wrapper's differ)."""
    data_config = getattr(processor, "data_config", None) or {}
    mean = getattr(processor, "image_mean", None) or data_config.get("mean")
    std = getattr(processor, "image_std", None) or data_config.get("std")
    size = getattr(processor, "size", None)
    side = None
    if isinstance(size, int):
        side = size
    elif size is not None:
        # a dict in transformers 4, a SizeDict (attributes) in 5
        get = size.get if isinstance(size, dict) else lambda k: getattr(size, k, None)
        side = get("height") or get("shortest_edge")
    if side is None and data_config.get("input_size"):
        side = data_config["input_size"][-1]
    return side, (list(mean) if mean is not None else None), (list(std) if std is not None else None)


def make_preprocessing(processor: Any, labels: list[str], hp: Any) -> Preprocessing:
    side, mean, std = _processor_stats(processor)
    prep = Preprocessing(
        task="image_classification", labels=labels, image_size=hp.image_size or side or DEFAULT_IMAGE_SIZE
    )
    if mean and std:
        prep.image_mean, prep.image_std = mean, std
    return prep


def save_processor(processor: Any, folder: Path, prep: Preprocessing) -> None:
    """Save the processor so that plain transformers feeds the model what training did: `prep.image_size` square,
    bilinear, the same mean and std. The timm wrapper's processor saves nothing of its own; it is rebuilt from
    `pretrained_cfg` in config.json, so that is where its size goes."""
    side = prep.image_size
    config_file = Path(folder) / "config.json"
    if getattr(processor, "data_config", None) is not None and config_file.is_file():
        config = json.loads(config_file.read_text())
        cfg = config.setdefault("pretrained_cfg", {})
        cfg.update(input_size=[3, side, side], crop_pct=1.0, crop_mode="center", interpolation="bilinear")
        cfg.update(mean=list(prep.image_mean), std=list(prep.image_std))
        cfg.pop("test_input_size", None)
        config_file.write_text(json.dumps(config, indent=2))
        return
    processor = copy.deepcopy(processor)
    processor.size = {"height": side, "width": side}
    for name, value in (("do_center_crop", False), ("resample", Image.Resampling.BILINEAR)):
        if hasattr(processor, name):
            setattr(processor, name, value)
    processor.save_pretrained(str(folder))


def decode(image: bytes | Image.Image, size: int) -> torch.Tensor:
    """One image as a 3xHxW uint8 tensor at `size` pixels square (bytes are opened through the format allow-list;
    datasets and /predict checked their pixel caps before)."""
    img = image if isinstance(image, Image.Image) else open_image(image)
    img = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def encode(processor: Any, images: list[bytes], prep: Preprocessing) -> torch.Tensor:
    """All images decoded once into an N x 3 x H x W uint8 tensor (a quarter of float32's memory)."""
    assert prep.image_size is not None
    return decode_all(images, prep.image_size)


def decode_all(images: list[bytes], size: int) -> torch.Tensor:
    """Images decoded into one N x 3 x size x size uint8 tensor, each written into its place: the tensor's memory
    once, not twice as stacking a list of decoded images would take."""
    if not images:
        return torch.empty(0, 3, 1, 1, dtype=torch.uint8)
    pixels = torch.empty(len(images), 3, size, size, dtype=torch.uint8)
    for i, image in enumerate(images):
        pixels[i] = decode(image, size)
    return pixels


class DecodedPerBatch:
    """Images kept as their files and decoded when a batch selects them: for a dataset whose decoded tensor would
    exceed the job's memory budget. Indexed like the uint8 tensor `encode` returns."""

    def __init__(self, images: list[bytes], size: int) -> None:
        self.images, self.size = images, size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, indices: torch.Tensor) -> torch.Tensor:
        return decode_all([self.images[i] for i in indices.tolist()], self.size)


def collate(prep: Preprocessing, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Normalise a uint8 batch to the model's float input."""
    mean = torch.tensor(prep.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(prep.image_std).view(1, 3, 1, 1)
    batch: dict[str, Any] = {"pixel_values": (pixels.float() / 255.0 - mean) / std}
    if prep.interpolate_pos_encoding:
        batch["interpolate_pos_encoding"] = True
    return batch
