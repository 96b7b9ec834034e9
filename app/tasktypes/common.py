"""Loading a Hugging Face classifier with a fresh head, and the file that records how it preprocesses."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

SERVICE_CONFIG = "finetune.json"
HEAD_NAMES = ("classifier", "score", "head", "fc", "logits")


@dataclass
class Preprocessing:
    """What the model needs at inference exactly as in training; saved beside the weights."""

    task: str
    labels: list[str]
    image_size: int | None = None
    image_mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    image_std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    max_length: int | None = None
    # a position-embedding model (ViT...) trained at another size than its own: its forward must interpolate
    interpolate_pos_encoding: bool = False

    def save(self, folder: Path) -> None:
        (Path(folder) / SERVICE_CONFIG).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, folder: Path) -> Preprocessing:
        return cls(**json.loads((Path(folder) / SERVICE_CONFIG).read_text()))


def label_maps(labels: list[str]) -> dict[str, Any]:
    """The config kwargs that size a head to `labels` and name its outputs."""
    return {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
    }


def load_with_new_head(auto_cls: Any, path: Path, labels: list[str], **config_overrides: Any) -> tuple[Any, set[str]]:
    """Load `path` with a classification head for `labels`; returns the model and its freshly initialised params."""
    model, info = auto_cls.from_pretrained(
        str(path),
        **label_maps(labels),
        **config_overrides,
        ignore_mismatched_sizes=True,
        output_loading_info=True,
        trust_remote_code=False,
        use_safetensors=None,
    )
    fresh = set(info.get("missing_keys", [])) | {k for k, *_ in info.get("mismatched_keys", [])}
    return model, fresh


def trained_labels(path: Path) -> list[str] | None:
    """The labels a model folder's classification head was trained for (config.json's id2label), if it says."""
    try:
        id2label = json.loads((Path(path) / "config.json").read_text()).get("id2label") or {}
        return [id2label[k] for k in sorted(id2label, key=int)]
    except (OSError, ValueError, KeyError, AttributeError):
        return None


def head_parameter_names(model: torch.nn.Module, fresh: set[str]) -> set[str]:
    """Names of the head's parameters: those initialised fresh, else those under a usual head name."""
    names = {n for n, _ in model.named_parameters()}
    head = {n for n in names if n in fresh}
    if not head:
        head = {n for n in names if any(part in HEAD_NAMES for part in n.split(".")[:-1])}
    return head
