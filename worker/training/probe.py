"""The cheapest honest baselines, and a head start for the new head, from one pass of the frozen base model.

Before training, the pretrained model (its new head not yet trained) reads every split once in eval mode. From that:
- the majority-class rate (the training split's most common label, scored on the test split);
- a linear probe: a logistic regression (scikit-learn, C chosen on the validation split) on frozen features,
  mean-pooled last hidden states for text encoders, the pooled features the head reads for image models;
- for `strategy: lp_ft`, the new head's weights from a logistic regression on exactly what the head reads, so that
  fine-tuning starts from a head that already separates the classes (LP-FT, Kumar et al. 2022).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from worker.training.data import batches
from worker.training.evaluation import summary_metrics
from worker.training.loop import Run, to_device
from worker.training.precision import autocast

C_GRID = (1.0, 0.1, 10.0, 0.01)  # ties go to the first: moderate regularisation
MAX_PROBE_TRAIN = 20_000  # larger training splits are subsampled (seeded) for the probe
MAX_LOGIT_STD = 4.0


@dataclass
class Features:
    pooled: dict[str, np.ndarray]  # split -> the baseline's features
    head_inputs: dict[str, np.ndarray]  # split -> what the new head reads (empty if it is not one Linear)


@dataclass
class Probe:
    """A logistic regression fitted on one kind of frozen features, and its scores."""

    model: LogisticRegression  # fitted on standardised features: (x - mean) / std
    mean: np.ndarray
    std: np.ndarray
    C: float
    val: dict[str, float]
    test: dict[str, float]

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.model.predict((x - self.mean) / self.std) if len(x) else np.zeros(0, dtype=np.int64)


@dataclass
class Baselines:
    majority_label: str
    majority: dict[str, float]  # accuracy and macro_f1 on the test split (and val_accuracy)
    probe: Probe | None
    features: str
    seconds: float
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The report's `baselines` section."""
        out: dict[str, Any] = {"majority_class": {"label": self.majority_label, **_rounded(self.majority)}}
        if self.probe is not None:
            out["linear_probe"] = {
                **_rounded(self.probe.test),
                "val_accuracy": round(self.probe.val["accuracy"], 6),
                "features": self.features,
                "C": self.probe.C,
            }
        return out


def head_linear(run: Run) -> torch.nn.Linear | None:
    """The new head, when it is a single Linear layer (the usual classifier of BERT, ViT and timm models)."""
    prefixes = {name.rsplit(".", 1)[0] for name in run.head}
    if len(prefixes) != 1:
        return None
    module = run.model.get_submodule(prefixes.pop())
    return module if isinstance(module, torch.nn.Linear) else None


@torch.no_grad()
def frozen_features(run: Run) -> Features:
    """One eval-mode pass over every split: the baseline's features and the head's inputs."""
    head = head_linear(run)
    text = run.prep.task == "text_classification"
    captured: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, args, _o: captured.append(args[0].float().cpu())) if head else None
    pooled: dict[str, np.ndarray] = {}
    head_inputs: dict[str, np.ndarray] = {}
    run.model.eval()
    try:
        for split, data in run.splits.items():
            rows: list[torch.Tensor] = []
            captured.clear()
            for inputs, _ in batches(data, run.spec, run.processor, run.prep, max(run.batch_size, 64)):
                inputs = to_device(inputs, run.device)
                with autocast(run.device, run.precision):
                    out = run.model(**inputs, output_hidden_states=text)
                rows.append(_mean_pooled(out.hidden_states[-1], inputs["attention_mask"]) if text else captured[-1])
            width = head.in_features if head else 1
            pooled[split] = torch.cat(rows).numpy() if rows else np.zeros((0, width), np.float32)
            if head is not None:
                head_inputs[split] = torch.cat(captured).numpy() if captured else np.zeros((0, width), np.float32)
    finally:
        run.model.train()
        if hook is not None:
            hook.remove()
    return Features(pooled, head_inputs)


def _mean_pooled(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).float().cpu()


def fit_probe(features: dict[str, np.ndarray], run: Run, standardize: bool = True) -> Probe | None:
    """A logistic regression on `features`' training split, C chosen by validation accuracy; None if it cannot fit.
    Without `standardize` the penalty keeps the weights small where the features barely vary (a safe head start)."""
    y = {split: data.labels.numpy() for split, data in run.splits.items()}
    x_train, y_train = features["train"], y["train"]
    if len(np.unique(y_train)) < 2:
        return None
    if len(y_train) > MAX_PROBE_TRAIN:
        keep = np.random.default_rng(run.hp.seed).choice(len(y_train), MAX_PROBE_TRAIN, replace=False)
        x_train, y_train = x_train[keep], y_train[keep]
    width = x_train.shape[1]
    mean, std = (x_train.mean(0), x_train.std(0) + 1e-6) if standardize else (np.zeros(width), np.ones(width))
    val_split = "val" if len(y["val"]) else "train"
    best: Probe | None = None
    n_labels = len(run.prep.labels)
    test_split = "test" if len(y["test"]) else val_split
    for c in C_GRID:
        probe = Probe(LogisticRegression(C=c, max_iter=1000).fit((x_train - mean) / std, y_train), mean, std, c, {}, {})
        probe.val = summary_metrics(y[val_split], probe.predict(features[val_split]), n_labels)
        if best is None or probe.val["accuracy"] > best.val["accuracy"]:
            probe.test = summary_metrics(y[test_split], probe.predict(features[test_split]), n_labels)
            best = probe
    return best


def majority_class(run: Run) -> tuple[str, dict[str, float]]:
    """The training split's most common label, scored as a constant prediction on the test (and val) split."""
    counts = np.bincount(run.splits["train"].labels.numpy(), minlength=len(run.prep.labels))
    label = int(counts.argmax())
    n = len(run.prep.labels)
    test_split = "test" if len(run.splits["test"]) else "val"
    test_labels = run.splits[test_split].labels.numpy()
    scores = summary_metrics(test_labels, np.full_like(test_labels, label), n)
    val_labels = run.splits["val"].labels.numpy()
    scores["val_accuracy"] = float((val_labels == label).mean()) if len(val_labels) else float("nan")
    return run.prep.labels[label], scores


def baselines_and_head_start(run: Run) -> Baselines:
    """The majority class and the linear probe on this run's splits; under strategy lp_ft, the head's weights from a
    probe on what the head reads. Call before training (on a resumed run the checkpoint's weights replace the head)."""
    started = time.perf_counter()
    features = frozen_features(run)
    text = run.prep.task == "text_classification"
    kind = "mean-pooled last hidden states" if text else "the pooled features the classifier reads"
    label, majority = majority_class(run)
    notes = []
    probe = fit_probe(features.pooled, run)
    if run.hp.strategy == "lp_ft":
        head = head_linear(run)
        if head is None or not run.head_is_new:
            notes.append("lp_ft: the head is not one new Linear layer, so it starts as loaded (plain fine-tuning)")
        else:
            head_probe = fit_probe(features.head_inputs, run, standardize=False)
            if head_probe is None:
                notes.append("lp_ft: the training split has a single class; the head starts fresh")
            else:
                load_probe_into(head, head_probe, len(run.prep.labels), features.head_inputs["train"])
    return Baselines(
        label, majority, probe, f"frozen {kind} + logistic regression", time.perf_counter() - started, notes
    )


@torch.no_grad()
def load_probe_into(head: torch.nn.Linear, probe: Probe, n_labels: int, train_inputs: np.ndarray) -> None:
    """Write a fitted logistic regression (on standardised inputs) into the head as weight and bias, scaled down
    where its logits on the training split spread wider than MAX_LOGIT_STD (same predictions, softer): a head that
    is too sure of itself would swamp the backbone's first gradient steps."""
    model, mean, std = probe.model, probe.mean, probe.std
    coef, intercept = model.coef_, model.intercept_
    if coef.shape[0] == 1:  # binary: sklearn keeps one row, for its second class
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
    weight = np.zeros((n_labels, coef.shape[1]), dtype=np.float64)
    bias = np.full(n_labels, float(intercept.min()) - 10.0)  # labels absent from the training split: never chosen
    for row, cls in enumerate(model.classes_):
        weight[cls], bias[cls] = coef[row] / std, intercept[row] - (coef[row] * mean / std).sum()
    present = list(model.classes_)
    spread = float((train_inputs @ weight[present].T + bias[present]).std()) if len(train_inputs) else 0.0
    if spread > MAX_LOGIT_STD:
        weight, bias = weight * (MAX_LOGIT_STD / spread), bias * (MAX_LOGIT_STD / spread)
    head.weight.copy_(torch.as_tensor(weight, dtype=head.weight.dtype))
    if head.bias is not None:
        head.bias.copy_(torch.as_tensor(bias, dtype=head.bias.dtype))


def _rounded(scores: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 6) for k, v in scores.items()}
