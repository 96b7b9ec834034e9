"""Scoring: validation metrics during training and the full classification report on the test split."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
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


# The actionable part of the report: calibration, the mistakes, and (two classes) the threshold trade-off.
CALIBRATION_BINS = 15  # equal-width confidence bins, as in Guo et al. 2017
TOP_CONFUSED = 20
TOP_MISCLASSIFIED = 50  # the most confident mistakes
SNIPPET_CHARS = 300
THRESHOLD_STEP = 0.05
TEMPERATURE_BOUNDS = (0.05, 20.0)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def calibration(probabilities: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS) -> dict:
    """Expected calibration error over `bins` equal-width bins of top-1 confidence (|accuracy - confidence| weighted
    by the share of examples in each bin) and the reliability diagram's bins (empty ones have null averages)."""
    n = len(labels)
    confidence = probabilities.max(axis=1) if n else np.zeros(0)
    correct = (probabilities.argmax(axis=1) == labels) if n else np.zeros(0, dtype=bool)
    # Bin b holds confidences in (b/bins, (b+1)/bins]; a confidence is never 0 (at least 1/classes).
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        row: dict[str, Any] = {"lower": round(b / bins, 6), "upper": round((b + 1) / bins, 6), "count": count}
        if count:
            conf, acc = float(confidence[members].mean()), float(correct[members].mean())
            ece += count / n * abs(acc - conf)
            row.update(confidence=round(conf, 6), accuracy=round(acc, 6))
        else:
            row.update(confidence=None, accuracy=None)
        rows.append(row)
    return {"ece": round(ece, 6) if n else None, "bins": rows}


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float | None:
    """The temperature T that minimises the negative log-likelihood of softmax(logits / T) (a bounded scalar
    search on log T); None without examples."""
    if len(labels) == 0:
        return None
    low, high = TEMPERATURE_BOUNDS
    result = minimize_scalar(
        lambda log_t: nll(logits, labels, math.exp(log_t)),
        bounds=(math.log(low), math.log(high)),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(math.exp(result.x))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the labels under softmax(logits / temperature)."""
    z = logits.astype(np.float64) / temperature
    log_z = z.max(axis=1) + np.log(np.exp(z - z.max(axis=1, keepdims=True)).sum(axis=1))
    return float((log_z - z[np.arange(len(labels)), labels]).mean())


def confused_pairs(labels: np.ndarray, predictions: np.ndarray, names: list[str], top: int = TOP_CONFUSED) -> list:
    """The `top` most frequent (true, predicted) mistakes, most frequent first."""
    matrix = confusion_matrix(labels, predictions, labels=list(range(len(names))))
    np.fill_diagonal(matrix, 0)
    pairs = [(int(matrix[t, p]), t, p) for t, p in zip(*np.nonzero(matrix), strict=True)]
    pairs.sort(key=lambda x: (-x[0], x[1], x[2]))
    return [{"true_label": names[t], "predicted_label": names[p], "count": c} for c, t, p in pairs[:top]]


def misclassified(
    probabilities: np.ndarray, labels: np.ndarray, names: list[str], inputs: list[dict], top: int = TOP_MISCLASSIFIED
) -> list[dict]:
    """The `top` most confident mistakes: position in the split, true and predicted labels with their scores, and
    what the example was (`inputs[i]`: a text snippet or an image reference)."""
    predicted = probabilities.argmax(axis=1) if len(labels) else np.zeros(0, dtype=int)
    wrong = np.nonzero(predicted != labels)[0]
    confidence = probabilities[wrong, predicted[wrong]] if len(wrong) else np.zeros(0)
    order = wrong[np.argsort(-confidence, kind="stable")][:top]
    return [
        {
            "index": int(i),
            "true_label": names[labels[i]],
            "predicted_label": names[predicted[i]],
            "score": round(float(probabilities[i, predicted[i]]), 6),
            "true_label_score": round(float(probabilities[i, labels[i]]), 6),
            **(inputs[i] if i < len(inputs) else {}),
        }
        for i in order
    ]


def text_snippet(text: str) -> str:
    return text if len(text) <= SNIPPET_CHARS else text[: SNIPPET_CHARS - 1] + "…"


def threshold_curve(probabilities: np.ndarray, labels: np.ndarray, names: list[str]) -> dict | None:
    """Two classes only: precision and recall of the second label (the positive one) when it is predicted at a
    score >= threshold, for thresholds 0.05, 0.10, ... 0.95. Precision is null where nothing is predicted."""
    if len(names) != 2:
        return None
    score, actual = probabilities[:, 1], labels == 1
    points = []
    steps = round(1 / THRESHOLD_STEP)
    for k in range(1, steps):
        threshold = round(k * THRESHOLD_STEP, 6)
        chosen = score >= threshold
        hits = int((chosen & actual).sum())
        points.append(
            {
                "threshold": threshold,
                "precision": round(hits / int(chosen.sum()), 6) if chosen.any() else None,
                "recall": round(hits / int(actual.sum()), 6) if actual.any() else None,
                "predicted_positive": int(chosen.sum()),
            }
        )
    return {"positive_label": names[1], "negative_label": names[0], "points": points}


def actionable_evaluation(
    test_logits: np.ndarray, test_labels: np.ndarray, val_logits: np.ndarray, val_labels: np.ndarray,
    names: list[str], inputs: list[dict],
) -> dict:  # fmt: skip
    """The report's new keys: calibration before and after temperature scaling (fitted on the validation split),
    the most-confused pairs, the most confident mistakes and, for two classes, precision/recall by threshold."""
    raw = softmax(test_logits)
    fitted = fit_temperature(val_logits, val_labels)
    temperature = round(fitted, 6) if fitted is not None else None  # the value /predict applies, exactly
    calibrated = calibration(softmax(test_logits, temperature), test_labels) if temperature else None
    predictions = raw.argmax(axis=1) if len(test_labels) else np.zeros(0, dtype=int)
    return {
        "calibration": {
            **calibration(raw, test_labels),
            "num_bins": CALIBRATION_BINS,
            "temperature": round(temperature, 6) if temperature else None,
            "temperature_fitted_on": "val" if temperature else None,
            "ece_calibrated": calibrated["ece"] if calibrated else None,
            "bins_calibrated": calibrated["bins"] if calibrated else None,
            "val_nll": round(nll(val_logits, val_labels), 6) if len(val_labels) else None,
            "val_nll_calibrated": round(nll(val_logits, val_labels, temperature), 6) if temperature else None,
        },
        "confused_pairs": confused_pairs(test_labels, predictions, names),
        "misclassified": misclassified(raw, test_labels, names, inputs),
        "thresholds": threshold_curve(raw, test_labels, names),
    }
