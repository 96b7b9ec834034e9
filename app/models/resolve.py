"""Finding a base model: a models-dir folder, a model this service fine-tuned, or the local hub cache."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import InvalidInput
from app.models.models import RegisteredModel
from app.storage import ArtifactStore


def resolve_base_model(session: Session, store: ArtifactStore, models_dir: Path, team_id: str, name: str) -> Path:
    """A local folder holding `name` in Hugging Face format; never downloads anything."""
    registered = session.scalar(
        select(RegisteredModel).where(RegisteredModel.id == name, RegisteredModel.team_id == team_id)
    )
    if registered is not None:
        return store.local_dir(registered.storage_key)
    if not name.startswith("/") and ".." not in Path(name).parts:
        folder = Path(models_dir) / name
        if (folder / "config.json").is_file():
            return folder
    cached = _from_hub_cache(name)
    if cached is not None:
        return cached
    raise InvalidInput(
        f"base_model '{name}' was not found. Use a folder name in the models directory ({models_dir}), "
        "a model id from GET /models, or a hub id already in the local Hugging Face cache (downloads are off)."
    )


def _from_hub_cache(name: str) -> Path | None:
    """The cached snapshot of hub id `name`, if the local cache has one."""
    if name.count("/") > 1 or name.startswith("/"):
        return None
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(name, local_files_only=True))
    except Exception:  # noqa: BLE001  (not cached, or not a valid repo id)
        return None
    return path if (path / "config.json").is_file() else None
