"""The training loss: cross-entropy with optional class weights and label smoothing, summed over micro-batches.

The validation and test losses stay plain cross-entropy, so they compare across jobs whatever these options are.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight

from app.jobs.schemas import Hyperparameters


def class_weight_tensor(hp: Hyperparameters, labels: list[str], train_labels: torch.Tensor) -> torch.Tensor | None:
    """One weight per label index, or None for "none". "balanced" is scikit-learn's n / (classes x count) over the
    classes the training split holds; a class it lacks (it cannot be learned anyway) weighs 1."""
    if hp.class_weights == "none":
        return None
    weights = np.ones(len(labels), dtype=np.float64)
    if hp.class_weights == "balanced":
        y = train_labels.numpy()
        present = np.unique(y)
        if len(present):
            weights[present] = compute_class_weight("balanced", classes=present, y=y)
    else:
        index = {label: i for i, label in enumerate(labels)}
        for label, weight in hp.class_weights.items():
            weights[index[label]] = weight  # unknown labels are a 422 at submit (app/jobs/spec_checks.py)
    return torch.tensor(weights, dtype=torch.float32)


def summed_loss(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None, smoothing: float
) -> torch.Tensor:
    """The sum over examples of (weighted, smoothed) cross-entropy; divided by `normalizer` of the whole batch it is
    exactly torch's mean reduction, however the batch was split into micro-batches."""
    return F.cross_entropy(logits.float(), labels, weight=weights, label_smoothing=smoothing, reduction="sum")


def normalizer(labels: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """What torch's mean reduction divides by: the count of examples, or the sum of their classes' weights."""
    if weights is None:
        return torch.tensor(float(len(labels)), device=labels.device)
    return weights[labels].sum()
