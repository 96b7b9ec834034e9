"""Finding a base model: a models-dir folder, a model this service fine-tuned, or the local Hugging Face cache.

The API only checks that a base model exists and suits the dataset's task (`check_base_model`); a worker fetches it
(`BaseModelRef.local_folder`, which downloads a fine-tuned model from a remote store into its cache).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.artifacts.store import ArtifactStore
from app.errors import InvalidInput
from app.registry.tables import RegisteredModel
from app.tasktypes.types import TaskType


@dataclass(frozen=True)
class BaseModelRef:
    """Where a base model is: a local folder, or a fine-tuned model's key in the artifact store."""

    name: str
    task: TaskType | None  # what its config says it classifies; None when the config does not say
    folder: Path | None = None
    storage_key: str | None = None
    family: str | None = None  # text_encoder, conv_image or vision_transformer (the defaults differ); None: unknown

    def local_folder(self, store: ArtifactStore) -> Path:
        """The model's folder on this machine (a remote store's copy is downloaded into the cache)."""
        if self.folder is not None:
            return self.folder
        assert self.storage_key is not None
        return store.local_dir(self.storage_key)


def find_base_model(session: Session, models_dir: Path, team_id: str, name: str, depth: int = 0) -> BaseModelRef | None:
    """The base model called `name` (the team's fine-tuned model id, a models-dir folder, a cached hub id), or None.
    Never downloads anything."""
    registered = session.scalar(
        select(RegisteredModel).where(RegisteredModel.id == name, RegisteredModel.team_id == team_id)
    )
    if registered is not None:
        ancestor = (
            find_base_model(session, models_dir, team_id, registered.base_model, depth + 1) if depth < 8 else None
        )
        family = ancestor.family if ancestor is not None else None
        return BaseModelRef(name, TaskType(registered.task), storage_key=registered.storage_key, family=family)
    folder = _models_dir_folder(Path(models_dir), name) or _from_hub_cache(name)
    if folder is None:
        return None
    task = task_of_config(folder)
    return BaseModelRef(name, task, folder=folder, family=family_of_config(folder, task))


def check_base_model(session: Session, models_dir: Path, team_id: str, name: str, task: TaskType) -> BaseModelRef:
    """The base model `name`, if it exists and can learn `task`; else a 422 that says what to pass instead."""
    ref = find_base_model(session, models_dir, team_id, name)
    if ref is None:
        raise InvalidInput(
            f"base_model '{name}' was not found. Use a folder name in the models directory (FINETUNE_MODELS_DIR), "
            "a model id from GET /models, or a hub id already in the local Hugging Face cache (downloads are off)."
        )
    if ref.task is not None and ref.task != task:
        wanted = "an image model (ViT, EfficientNet, ResNet...)" if task == TaskType.image_classification else (
            "a text model (BERT, MiniLM...)"
        )  # fmt: skip
        raise InvalidInput(
            f"base_model '{name}' is a {ref.task.value.replace('_', ' ')} model, but the dataset is for "
            f"{task.value.replace('_', ' ')}; pick {wanted}."
        )
    return ref


def task_of_config(folder: Path) -> TaskType | None:
    """The task a Hugging Face model folder's architecture does, from its config.json's model_type."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    )

    try:
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    image = model_type in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES
    text = model_type in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES
    if image == text:  # unknown, or an architecture that does both
        return None
    return TaskType.image_classification if image else TaskType.text_classification


# Image architectures built on patches and attention (their config's model_type, or a timm architecture's prefix).
VISION_TRANSFORMERS = (
    "vit",
    "deit",
    "beit",
    "swin",
    "dinov2",
    "data2vec-vision",
    "eva",
    "levit",
    "pvt",
    "dinat",
    "cait",
)


def family_of_config(folder: Path, task: TaskType | None) -> str | None:
    """text_encoder, conv_image or vision_transformer, from config.json (a timm wrapper names its architecture)."""
    if task == TaskType.text_classification:
        return "text_encoder"
    if task != TaskType.image_classification:
        return None
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    kind = str(config.get("architecture") or "") if config.get("model_type") == "timm_wrapper" else ""
    kind = kind or str(config.get("model_type") or "")
    return "vision_transformer" if kind.lower().startswith(VISION_TRANSFORMERS) else "conv_image"


def _models_dir_folder(models_dir: Path, name: str) -> Path | None:
    if name.startswith("/") or ".." in Path(name).parts:
        return None
    folder = models_dir / name
    return folder if (folder / "config.json").is_file() else None


def _from_hub_cache(name: str) -> Path | None:
    """The cached snapshot of hub id `name`, if the local cache has one."""
    if name.count("/") > 1 or name.startswith("/"):
        return None
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(name, local_files_only=True))
    except Exception:  # not cached, or not a valid repo id
        return None
    return path if (path / "config.json").is_file() else None
