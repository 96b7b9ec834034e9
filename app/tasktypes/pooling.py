"""Mean pooling for text classifiers built on sentence-embedding encoders.

`AutoModelForSequenceClassification` reads the [CLS] token (BERT through its pooler). A sentence-transformers encoder
such as all-MiniLM-L6-v2 was trained for the mean of its token vectors instead: its [CLS] output and pooler were never
tuned for sentence meaning. With `pooling: "mean"` (a named option: "auto" reads [CLS], as mean pooling measured no
better on Rotten Tomatoes with MiniLM, bench/README.md) the model keeps its class and weights (the saved folder is an
ordinary Hugging Face model with the same tensors), its config says `classifier_pooling: "mean"` (the name ModernBERT
uses for the same choice), and the forward pass feeds the classifier the attention-masked mean of the last hidden
states. Every place that loads a fine-tuned model calls `apply_saved_pooling`, so training, evaluation, serving, int8
and the ONNX export run the same computation.
"""

from __future__ import annotations

import inspect
import types
from typing import Any

import torch
from transformers.modeling_outputs import SequenceClassifierOutput

FIELD = "classifier_pooling"
POOLINGS = ("cls", "mean")


def mean_pooling_unsupported(model: torch.nn.Module) -> str | None:
    """Why `model` cannot classify from mean-pooled tokens, or None: the head must be a single linear layer over the
    hidden states (BERT, MiniLM, DistilBERT), and a model whose config chooses its pooling itself keeps its own."""
    config = getattr(model, "config", None)
    if config is None or _native(model):
        return f"{getattr(config, 'model_type', 'this model')} chooses its own pooling ({FIELD} in its config)"
    classifier, base = getattr(model, "classifier", None), getattr(model, "base_model", model)
    if not isinstance(classifier, torch.nn.Linear) or base is model:
        return f"{config.model_type}'s classification head is not one linear layer over the encoder's states"
    if classifier.in_features != getattr(config, "hidden_size", None):
        return f"{config.model_type}'s classification head does not read the encoder's hidden states"
    return None


def use_pooling(model: torch.nn.Module, pooling: str) -> None:
    """Make `model` classify from `pooling` ("cls": as its class does; "mean": see the module docstring) and record
    the choice in its config, which save_pretrained writes. Raises ValueError where "mean" cannot apply."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}")
    if pooling == "mean":
        why = mean_pooling_unsupported(model)
        if why is not None:
            raise ValueError(f'pooling "mean" cannot apply: {why}; use pooling "cls"')
    elif _native(model):
        return  # its config's classifier_pooling is the model's own (ModernBERT): left as it is
    setattr(model.config, FIELD, pooling)
    if pooling == "mean":
        model.forward = types.MethodType(_mean_pooled_forward(model), model)
    elif "forward" in vars(model):
        del model.forward


def _native(model: torch.nn.Module) -> bool:
    config = getattr(model, "config", None)
    return config is not None and FIELD in inspect.signature(type(config).__init__).parameters


def apply_saved_pooling(model: torch.nn.Module) -> torch.nn.Module:
    """A model loaded from a folder, classifying the way it was trained (its config's classifier_pooling)."""
    config = getattr(model, "config", None)
    if getattr(config, FIELD, None) == "mean" and mean_pooling_unsupported(model) is None:
        use_pooling(model, "mean")
    return model


def _mean_pooled_forward(model: torch.nn.Module) -> Any:
    """A forward for `model` that takes the inputs its encoder takes (the ONNX export reads the signature)."""
    encoder: Any = model.base_model
    encoder_inputs = inspect.signature(encoder.forward).parameters
    token_types = "token_type_ids" in encoder_inputs

    def forward(
        self: Any,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, **kwargs}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        outputs = self.base_model(**inputs)
        hidden = outputs[0]
        if attention_mask is None:
            pooled = hidden.mean(dim=1)
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        logits = self.classifier(self.dropout(pooled) if hasattr(self, "dropout") else pooled)
        loss = torch.nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=getattr(outputs, "hidden_states", None),
            attentions=getattr(outputs, "attentions", None),
        )

    if not token_types:
        params = [p for name, p in inspect.signature(forward).parameters.items() if name != "token_type_ids"]
        forward.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    return forward
