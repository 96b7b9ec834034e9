"""Checks of a job spec against what it will run on, at submit: a spec that can never train is a 422 that says what to
change, not a job that fails minutes later with an internal error."""

from __future__ import annotations

import json
from typing import Any

from app.artifacts.store import ArtifactStore
from app.base_models.resolve import BaseModelRef
from app.datasets.tables import Dataset
from app.errors import InvalidInput
from app.jobs.schemas import Hyperparameters
from app.tasktypes.types import TaskType

# Architectures whose position ids start after the padding index: they read two fewer tokens than their table holds.
PADDING_OFFSET_MODELS = {"roberta", "xlm-roberta", "camembert", "longformer", "bart", "mbart"}
WHY_SPLIT = {
    "val": "early stopping, the best checkpoint and the validation curves need it",
    "test": "the evaluation report is computed on it",
}


def check_spec(
    hp: Hyperparameters,
    dataset: Dataset,
    base: BaseModelRef,
    store: ArtifactStore,
    task: TaskType,
    user_set: set[str] | frozenset[str] = frozenset(),
) -> None:
    """Raise InvalidInput for a spec that cannot run on this dataset and base model. A default the model cannot
    take is fitted to it instead (`user_set`: the hyperparameters the user chose; those are never changed)."""
    _check_splits(dataset)
    if task == TaskType.text_classification:
        positions = max_positions(base_config(base, store))
        if positions is not None and hp.max_length > positions:
            if "max_length" not in user_set:
                hp.max_length = positions
                hp.auto["max_length"] = f"base_model '{base.name}' reads at most {positions} tokens"
                return
            raise InvalidInput(
                f"max_length {hp.max_length} is more than base_model '{base.name}' can read ({positions} tokens); "
                f"set max_length to {positions} or less"
            )


def _check_splits(dataset: Dataset) -> None:
    for split, why in WHY_SPLIT.items():
        if sum(dataset.counts.get(split, {}).values()) == 0:
            raise InvalidInput(
                f"dataset '{dataset.name}' has no {split} examples, and {why}. Upload at least 3 examples of each "
                f"class (about 10% are held out for val and test), or give {split} rows in the upload's split "
                "column or folders"
            )


def base_config(base: BaseModelRef, store: ArtifactStore) -> dict[str, Any]:
    """The base model's config.json ({} when it cannot be read: the worker then reports the problem)."""
    try:
        if base.folder is not None:
            raw = (base.folder / "config.json").read_bytes()
        elif base.storage_key is not None:
            raw = store.get_bytes(f"{base.storage_key}/config.json")
        else:
            return {}
        config = json.loads(raw)
    except (OSError, ValueError, KeyError):
        return {}
    return config if isinstance(config, dict) else {}


def max_positions(config: dict[str, Any]) -> int | None:
    """How many tokens a text model reads at most, from its config; None when the config does not say."""
    value = config.get("max_position_embeddings") or config.get("n_positions")
    if not isinstance(value, int) or value <= 0:
        return None
    return value - 2 if config.get("model_type") in PADDING_OFFSET_MODELS else value
