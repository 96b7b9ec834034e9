"""Checks of a job spec against what it will run on, at submit: a spec that can never train is a 422 that says what to
change, not a job that fails minutes later with an internal error."""

from __future__ import annotations

import json
from typing import Any

from app.artifacts.store import ArtifactStore
from app.base_models.resolve import BaseModelRef
from app.datasets.tables import Dataset
from app.errors import InvalidInput
from app.jobs.adapters import default_targets, model_skeleton, named_head_modules, target_problem
from app.jobs.blocks import BLOCK_LISTS, find_blocks, weight_names
from app.jobs.schemas import Hyperparameters
from app.tasktypes.pooling import FIELD, POOLINGS, mean_pooling_unsupported
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
    _check_class_weights(hp, dataset)
    _check_trainable_layers(hp, base)
    _check_adapter(hp, dataset, base, task)
    if hp.augmentation != "none" and task != TaskType.image_classification:
        raise InvalidInput(
            f"augmentation \"{hp.augmentation}\" applies to image datasets only and dataset '{dataset.name}' is "
            f'{task.value}; set augmentation to "none" or leave it out'
        )
    if task != TaskType.text_classification and hp.pooling != "auto":
        raise InvalidInput(
            f"pooling \"{hp.pooling}\" applies to text models only and dataset '{dataset.name}' is {task.value}; "
            "leave pooling out (image models pool as their architecture does)"
        )
    if task == TaskType.text_classification:
        _check_pooling(hp, dataset, base, store, "pooling" in user_set)
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


def _check_class_weights(hp: Hyperparameters, dataset: Dataset) -> None:
    if not isinstance(hp.class_weights, dict):
        return
    unknown = [label for label in hp.class_weights if label not in dataset.labels]
    if unknown:
        names = ", ".join(repr(label) for label in unknown[:10])
        known = ", ".join(repr(label) for label in dataset.labels[:20])
        raise InvalidInput(
            f"class_weights names labels that dataset '{dataset.name}' does not have: {names}. Its labels are "
            f"{known}{' ...' if len(dataset.labels) > 20 else ''}"
        )


def _check_trainable_layers(hp: Hyperparameters, base: BaseModelRef) -> None:
    """freeze "last_n" needs a block list of at least trainable_layers blocks (checked where the base model's files
    are on this machine; a registered model in object storage is checked by the worker, which fails the job)."""
    if hp.freeze != "last_n" or hp.trainable_layers is None or base.folder is None:
        return
    blocks = find_blocks(weight_names(base.folder))
    if blocks is None:
        raise InvalidInput(
            f"base_model '{base.name}' has no encoder blocks or stages that freeze \"last_n\" can find (it looks for "
            f'{", ".join(BLOCK_LISTS)} lists); use freeze "backbone" or "none"'
        )
    if hp.trainable_layers > blocks.count:
        raise InvalidInput(
            f"trainable_layers {hp.trainable_layers} is more than the {blocks.count} blocks of base_model "
            f"'{base.name}' ({blocks.prefix}); set it to {blocks.count} or less, or freeze \"none\" to train them all"
        )


def _check_adapter(hp: Hyperparameters, dataset: Dataset, base: BaseModelRef, task: TaskType) -> None:
    """An adapter's layers must exist and be ones LoRA can adapt and merge (checked where the base model's files are on
    this machine and its architecture builds from its config; otherwise the worker checks and fails the job)."""
    if hp.adapter is None or base.folder is None:
        return
    try:
        skeleton = model_skeleton(base.folder, task, len(dataset.labels))
    except Exception:  # an unreadable or unknown config: the worker loads the model and says what is wrong
        return
    targets = hp.adapter.target_modules or default_targets(skeleton, hp.adapter.r)
    problem = target_problem(skeleton, targets, named_head_modules(skeleton))
    if problem:
        raise InvalidInput(f"base_model '{base.name}': {problem}")


def _check_pooling(
    hp: Hyperparameters, dataset: Dataset, base: BaseModelRef, store: ArtifactStore, chosen: bool
) -> None:
    """A model this service fine-tuned with mean pooling keeps it as a base model unless the user chose; a chosen
    "mean" needs a head that can read it (a 422 that says so)."""
    saved = base_config(base, store).get(FIELD)
    if not chosen and saved in POOLINGS and saved != hp.pooling:
        hp.pooling = saved
        hp.auto["pooling"] = f"{saved}: as base_model '{base.name}' was fine-tuned"
    if not chosen or hp.pooling != "mean" or base.folder is None:
        return
    try:
        why = mean_pooling_unsupported(model_skeleton(base.folder, TaskType.text_classification, len(dataset.labels)))
    except Exception:  # an unreadable or unknown config: the worker loads the model and says what is wrong
        return
    if why is not None:
        raise InvalidInput(f'pooling "mean" cannot apply to base_model \'{base.name}\': {why}; use pooling "cls"')


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
