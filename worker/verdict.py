"""The fine-tuned model against its baselines: the report's comparison, the events that say it plainly, the flag."""

from __future__ import annotations

from typing import Any

from worker.training.probe import Baselines


def describe_baselines(b: Baselines) -> str:
    majority = b.majority
    text = f"majority class '{b.majority_label}': test accuracy {majority['accuracy']:.1%}"
    if b.probe is not None:
        text += f"; linear probe ({b.features}): test accuracy {b.probe.test['accuracy']:.1%}, "
        text += f"macro-F1 {b.probe.test['macro_f1']:.3f}"
    return f"baselines on the same splits, {b.seconds:.1f} s: {text}"


def compare_with_baselines(report: dict, b: Baselines, top_val_accuracy: float | None) -> dict[str, Any]:
    """The report's `baselines`, the margins over them, and `below_baseline`: no validation accuracy the run
    reached beat always predicting the training split's most common label."""
    accuracy, macro_f1 = report["accuracy"], report["macro_avg"]["f1"]
    margins: dict[str, float] = {"accuracy_over_majority_class": accuracy - b.majority["accuracy"]}
    if b.probe is not None:
        margins["accuracy_over_linear_probe"] = accuracy - b.probe.test["accuracy"]
        margins["macro_f1_over_linear_probe"] = macro_f1 - b.probe.test["macro_f1"]
    majority_val = b.majority["val_accuracy"]
    below = top_val_accuracy is not None and majority_val == majority_val and top_val_accuracy <= majority_val
    return {
        "baselines": b.summary(),
        "compared_to_baselines": {k: round(v, 6) for k, v in margins.items()},
        "below_baseline": bool(below),
    }


def verdict_on_baselines(report: dict) -> tuple[str, str]:
    """An event (kind, message) that says plainly whether fine-tuning paid off."""
    ours = f"the fine-tuned model's test accuracy is {report['accuracy']:.1%}"
    probe = report["baselines"].get("linear_probe")
    majority = report["baselines"]["majority_class"]
    if report["below_baseline"]:
        return "below_baseline", (
            f"warning: {ours}, and no evaluation beat always predicting '{majority['label']}' on the validation split: "
            "the model learned nothing useful. Aliases refuse it unless forced; try more data, more epochs, a "
            "smaller learning rate or another base model."
        )
    if probe is not None and report["compared_to_baselines"]["accuracy_over_linear_probe"] < 0:
        return "below_linear_probe", (
            f"{ours}, below the linear probe's {probe['accuracy']:.1%} (frozen features + logistic regression): "
            "fine-tuning did not pay off on this data; strategy 'head_only' or more epochs may do better."
        )
    against = f"the linear probe's {probe['accuracy']:.1%} and " if probe is not None else ""
    return "beat_baselines", f"{ours}, above {against}the majority class's {majority['accuracy']:.1%}"


def model_metrics(report: dict) -> dict[str, Any]:
    """What a registered model shows of its report."""
    probe = report["baselines"].get("linear_probe") or {}
    return {
        "test_accuracy": report["accuracy"],
        "test_macro_f1": report["macro_avg"]["f1"],
        "best_step": report["best_step"],
        "majority_class_accuracy": report["baselines"]["majority_class"]["accuracy"],
        "linear_probe_accuracy": probe.get("accuracy"),
        "test_ece": report["calibration"]["ece"],
        "temperature": report["calibration"]["temperature"],
        "adapter": report.get("adapter"),
        "trainable_parameters": report.get("trainable_parameters"),
        "trainable_share": report.get("trainable_share"),
    }
