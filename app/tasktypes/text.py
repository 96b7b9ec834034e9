"""Text classification: tokenizer, AutoModelForSequenceClassification, dynamic padding."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from app.tasktypes.common import Preprocessing, load_with_new_head

DROPOUT_FIELDS = ("classifier_dropout", "seq_classif_dropout")


def load_model(
    path: Path, labels: list[str], dropout: float | None, prep: Preprocessing | None = None
) -> tuple[PreTrainedModel, set[str], list[str]]:
    """The base model with a new head; returns (model, fresh param names, notes for the job's events)."""
    overrides: dict[str, Any] = {}
    notes: list[str] = []
    if dropout is not None:
        config = AutoConfig.from_pretrained(str(path))
        field = next((f for f in DROPOUT_FIELDS if hasattr(config, f)), None)
        if field:
            overrides[field] = dropout
        else:
            notes.append(f"{config.model_type} has no classifier dropout; 'dropout' was ignored")
    model, fresh = load_with_new_head(AutoModelForSequenceClassification, path, labels, **overrides)
    return model, fresh, notes


def load_processor(path: Path) -> Any:
    return AutoTokenizer.from_pretrained(str(path))


def make_preprocessing(processor: Any, labels: list[str], hp: Any) -> Preprocessing:
    limit = getattr(processor, "model_max_length", None) or hp.max_length
    return Preprocessing(task="text_classification", labels=labels, max_length=min(hp.max_length, limit))


def encode(processor: Any, texts: list[str], prep: Preprocessing) -> list[list[int]]:
    """Token ids per text, truncated, unpadded (batches pad to their longest)."""
    return processor(texts, truncation=True, max_length=prep.max_length)["input_ids"]


def collate(processor: Any, encoded: list[list[int]]) -> dict[str, torch.Tensor]:
    """Pad a batch of token id lists to its longest member."""
    longest = max(len(ids) for ids in encoded)
    pad = processor.pad_token_id or 0
    input_ids = torch.full((len(encoded), longest), pad, dtype=torch.long)
    attention = torch.zeros((len(encoded), longest), dtype=torch.long)
    for i, ids in enumerate(encoded):
        input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention}
