"""Scoring: validation metrics during training and the full classification report on the test split."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score


def summary_metrics(labels: np.ndarray, predictions: np.ndarray, num_labels: int) -> dict[str, float]:
    """Accuracy and macro-F1 (over every label, present or not)."""
    if len(labels) == 0:
        return {"accuracy": float("nan"), "macro_f1": float("nan")}
    every = list(range(num_labels))
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "macro_f1": float(f1_score(labels, predictions, labels=every, average="macro", zero_division=0)),
    }


def classification_summary(labels: np.ndarray, predictions: np.ndarray, names: list[str], loss: float) -> dict:
    """Per-class precision, recall, F1 and support; accuracy; macro and weighted averages; confusion matrix."""
    every = list(range(len(names)))
    report = classification_report(
        labels, predictions, labels=every, target_names=names, output_dict=True, zero_division=0
    )
    per_class = {name: _round(report[name]) for name in names}
    return {
        "split": "test",
        "num_examples": int(len(labels)),
        "loss": round(loss, 6),
        "accuracy": round(float(accuracy_score(labels, predictions)), 6) if len(labels) else None,
        "per_class": per_class,
        "macro_avg": _round(report["macro avg"]),
        "weighted_avg": _round(report["weighted avg"]),
        "confusion_matrix": {
            "labels": names,
            "matrix": confusion_matrix(labels, predictions, labels=every).tolist(),
            "rows": "true label",
            "columns": "predicted label",
        },
    }


def _round(row: dict) -> dict:
    return {
        "precision": round(float(row["precision"]), 6),
        "recall": round(float(row["recall"]), 6),
        "f1": round(float(row["f1-score"]), 6),
        "support": int(row["support"]),
    }
