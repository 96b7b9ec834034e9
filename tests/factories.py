"""Plain functions that build tiny models and datasets for tests (random weights, built from configs)."""

from __future__ import annotations

import csv
import functools
import io
import json
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from app.db import Database

WORDS = {
    "positive": ["good", "great", "fine", "love", "nice", "happy", "superb", "fun"],
    "negative": ["bad", "awful", "poor", "hate", "sad", "boring", "dull", "worst"],
}
FILLER = ["the", "movie", "was", "a", "plot", "film", "and", "it", "very", "really"]


def seeded(build: Callable[[Path], Path]) -> Callable[[Path], Path]:
    """The same random weights in every session, whatever ran before: a test that compares two training runs to
    float-rounding tolerance gets the model it was checked on, not a fresh draw (1 in about 200 of which once took
    an out-of-memory comparison past its tolerance). The caller's random state is left as it was."""

    @functools.wraps(build)
    def wrapper(folder: Path) -> Path:
        import torch

        with torch.random.fork_rng():
            torch.manual_seed(0)
            return build(folder)

    return wrapper


@seeded
def build_tiny_text_model(folder: Path) -> Path:
    """A 2-layer BERT with hidden size 32 and a word-level vocab, saved in Hugging Face format."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *FILLER, *sum(WORDS.values(), [])]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, model_max_length=64)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, num_labels=2,
    )  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@seeded
def build_tiny_image_model(folder: Path) -> Path:
    """A 2-layer ViT on 32 px images with hidden size 32, saved in Hugging Face format."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    folder.mkdir(parents=True, exist_ok=True)
    config = ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=2,
    )  # fmt: skip
    ViTForImageClassification(config).save_pretrained(str(folder))
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(str(folder))
    return folder


@seeded
def build_tiny_timm_model(folder: Path) -> Path:
    """timm's `test_efficientnet` (a few thousand weights) through transformers' timm wrapper, native size 64 px,
    bicubic with a 0.875 center crop as timm's ImageNet models are; its processor lives in config.json."""
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    folder.mkdir(parents=True, exist_ok=True)
    pretrained_cfg = {
        "input_size": [3, 64, 64], "interpolation": "bicubic", "crop_pct": 0.875, "crop_mode": "center",
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "num_classes": 2,
    }  # fmt: skip
    config = TimmWrapperConfig(architecture="test_efficientnet", num_labels=2, pretrained_cfg=pretrained_cfg)
    TimmWrapperForImageClassification(config).save_pretrained(str(folder), safe_serialization=True)
    return folder


def text_rows(per_class: int = 30, seed: int = 0) -> list[dict]:
    """Sentences whose sentiment word gives away the label."""
    rng = np.random.default_rng(seed)
    rows = []
    for label, words in WORDS.items():
        for _ in range(per_class):
            tokens = list(rng.choice(FILLER, 4)) + [str(rng.choice(words))]
            rng.shuffle(tokens)
            rows.append({"text": " ".join(tokens), "label": label})
    return rows


def text_csv(rows: list[dict] | None = None, columns: tuple[str, str] = ("text", "label")) -> bytes:
    rows = rows if rows is not None else text_rows()
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns)
    for row in rows:
        writer.writerow([row["text"], row["label"]])
    return out.getvalue().encode()


def text_jsonl(rows: list[dict] | None = None) -> bytes:
    rows = rows if rows is not None else text_rows()
    return ("\n".join(json.dumps(r) for r in rows) + "\n").encode()


COLORS = {"red": (220, 30, 30), "blue": (30, 30, 220)}


def image_bytes(color: tuple[int, int, int], seed: int, fmt: str = "PNG") -> bytes:
    """A noisy square of one colour."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(color) + rng.normal(0, 25, (24, 24, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def image_zip(per_class: int = 20, extra: dict[str, bytes] | None = None) -> bytes:
    """A zip of class folders (red/, blue/) of small PNGs, plus any `extra` entries."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for c, (name, color) in enumerate(COLORS.items()):
            for i in range(per_class):
                zf.writestr(f"{name}/{i:03d}.png", image_bytes(color, seed=c * 1000 + i))
        for entry, data in (extra or {}).items():
            zf.writestr(entry, data)
    return buf.getvalue()


def insert_job(db: Database, **values: object) -> str:
    """A job row (of a new team) written straight to the database, with any column set; returns its id."""
    import app.all_tables  # noqa: F401
    from app.jobs.tables import TrainingJob
    from app.teams.tables import Team

    with db.session() as session:
        team = Team(name=f"team-{uuid.uuid4().hex[:12]}")
        session.add(team)
        session.flush()
        job = TrainingJob(
            team_id=team.id, dataset_id=None, task="text_classification", base_model="m", hyperparameters={}
        )
        for name, value in values.items():
            setattr(job, name, value)
        session.add(job)
        session.flush()
        return job.id


class Sent(list[str]):
    """A `send` (lifecycle.Send) for tests: records the job ids it was given, and their pools in `pools`."""

    def __init__(self) -> None:
        super().__init__()
        self.pools: list[str] = []

    def __call__(self, job_id: str, pool: str) -> None:
        self.append(job_id)
        self.pools.append(pool)
