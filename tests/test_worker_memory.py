"""Worker memory bounded by design: the decoded dataset is uint8 at training size, estimated at submit against
FINETUNE_JOB_MEMORY_BUDGET_MB (a 422 that says how to fit), shown in the job's spec, and decoded per batch by a
worker that finds more than the budget's worth."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
import zipfile

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

from app.config import Settings
from app.errors import InvalidInput
from app.jobs.memory import MB, check_budget, decoded_image_bytes, estimate, model_shape
from app.jobs.schemas import Hyperparameters
from app.processes import ROOT
from app.tasktypes.image import DecodedPerBatch
from app.tasktypes.specs import task_spec
from app.tasktypes.types import TaskType
from tests.conftest import wait_for_job
from tests.factories import image_zip
from worker.training.data import batches, epoch_order, prepare_splits

IMAGE, TEXT = TaskType.image_classification, TaskType.text_classification
DEFAULT_BUDGET_MB = Settings.model_fields["job_memory_budget_mb"].default


def pixel_zip(count: int) -> bytes:
    """`count` one-pixel PNGs in two class folders: a few hundred bytes a file, 3 MiB each once decoded at 1024."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(count):
            png = io.BytesIO()
            Image.new("RGB", (1, 1), (i % 256, (i // 256) % 256, 7 if i % 2 else 200)).save(png, format="PNG")
            zf.writestr(f"{'ab'[i % 2]}/{i:05d}.png", png.getvalue())
    return buf.getvalue()


def image_records(per_class: int = 10) -> tuple[list[dict], list[str]]:
    """Records as a worker reads them (image files as bytes), split 60/20/20."""
    with zipfile.ZipFile(io.BytesIO(image_zip(per_class=per_class))) as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".png"))
        records = [
            {"split": ("train", "train", "train", "val", "test")[i % 5], "label": n.split("/")[0], "image": zf.read(n)}
            for i, n in enumerate(names)
        ]
    return records, sorted({r["label"] for r in records})


@pytest.mark.parametrize(("rows", "side"), [(1, 16), (600, 224), (600, 1024), (100_000, 384)])
def test_the_image_cache_is_rows_times_the_training_size_in_bytes(rows, side):
    memory = estimate(IMAGE, rows, Hyperparameters(image_size=side))
    assert memory.data_cache == rows * 3 * side * side
    assert memory.total == memory.data_cache  # no model shape given: its terms are unknown, not zero
    assert memory.weights is None and memory.activations is None
    assert f"{rows} images at {side}x{side} pixels" in memory.detail


@pytest.mark.parametrize(
    ("rows", "max_length", "text_bytes", "tokens"),
    [
        (1000, 128, None, 128_000),
        (1000, 128, 50_000, 52_000),  # short texts: at most one token a byte, plus two specials each
        (10, 8192, 10**9, 81_920),
    ],
)
def test_the_text_cache_is_bounded_by_max_length_and_the_upload(rows, max_length, text_bytes, tokens):
    memory = estimate(TEXT, rows, Hyperparameters(max_length=max_length), text_bytes=text_bytes)
    assert memory.data_cache == tokens * 36


def test_model_terms_come_from_the_files_without_loading_weights(models_dir):
    vit, bert = model_shape(models_dir / "tiny-vit"), model_shape(models_dir / "tiny-bert")
    assert vit is not None and bert is not None
    loaded_vit = AutoModelForImageClassification.from_pretrained(str(models_dir / "tiny-vit"))
    loaded_bert = AutoModelForSequenceClassification.from_pretrained(str(models_dir / "tiny-bert"))
    assert vit.parameters == sum(p.numel() for p in loaded_vit.parameters())
    assert bert.parameters == sum(p.numel() for p in loaded_bert.parameters())
    assert (vit.image_size, vit.patch_size, vit.hidden_size, vit.layers, vit.heads) == (32, 8, 32, 2, 2)
    assert (bert.positions, bert.hidden_size) == (64, 32)
    assert model_shape(None) is None and model_shape(models_dir) is None  # not local, or no weights: unknown

    full = estimate(IMAGE, 100, Hyperparameters(batch_size=4), vit)
    assert full.data_cache == decoded_image_bytes(100, 32)  # the model's own size when the spec leaves it out
    assert full.weights == vit.parameters * 4
    assert full.training_state == 3 * full.weights  # gradients and AdamW's two moments
    assert estimate(IMAGE, 100, Hyperparameters(optimizer="sgd"), vit).training_state == 2 * full.weights
    assert estimate(IMAGE, 100, Hyperparameters(freeze="backbone"), vit).training_state == 0
    # 17 tokens (16 patches and [CLS]) a 32 px image: 68*s*h + 10*a*s^2 bytes a layer
    assert full.activations == 4 * 2 * (68 * 17 * 32 + 10 * 2 * 17 * 17)
    bigger = estimate(IMAGE, 100, Hyperparameters(batch_size=8, image_size=64), vit)
    assert bigger.activations is not None and bigger.activations > 2 * full.activations
    text = estimate(TEXT, 10, Hyperparameters(max_length=512), bert)
    assert text.data_cache == 10 * 64 * 36  # max_length is capped by the model's positions
    assert text.total == text.data_cache + 4 * text.weights + (text.activations or 0)
    assert text.activations


def test_the_budget_refusal_says_how_to_fit():
    hp = Hyperparameters(image_size=1024)
    memory = estimate(IMAGE, 600, hp)
    check_budget(memory, IMAGE, 600, hp, budget_mb=1800)  # 1800 MiB fits
    with pytest.raises(InvalidInput) as refused:
        check_budget(memory, IMAGE, 600, hp, budget_mb=1000)
    detail = refused.value.detail
    assert "about 1800 MB" in detail and "600 images at 1024x1024" in detail
    side = 1000 * MB // (600 * 3)
    assert f"lower image_size to {int(side**0.5)} or less" in detail
    assert "train on at most 333 examples" in detail and "FINETUNE_JOB_MEMORY_BUDGET_MB" in detail
    hp = Hyperparameters(max_length=512)
    with pytest.raises(InvalidInput, match="lower max_length to 58 or less"):
        check_budget(estimate(TEXT, 1000, hp), TEXT, 1000, hp, budget_mb=2)


def test_the_worker_keeps_uint8_images_at_their_training_size(models_dir):
    records, labels = image_records()
    spec = task_spec(IMAGE)
    processor = spec.load_processor(models_dir / "tiny-vit")
    prep = spec.make_preprocessing(processor, labels, Hyperparameters(image_size=48))
    splits = prepare_splits(records, spec, processor, prep, budget_bytes=decoded_image_bytes(len(records), 48))
    for split in splits.values():
        assert isinstance(split.encoded, torch.Tensor) and split.encoded.dtype == torch.uint8
        assert tuple(split.encoded.shape) == (len(split), 3, 48, 48)
    assert sum(s.encoded.nbytes for s in splits.values()) == decoded_image_bytes(len(records), 48)

    # one byte short of the budget: the same pixels, decoded per batch
    small = prepare_splits(records, spec, processor, prep, budget_bytes=decoded_image_bytes(len(records), 48) - 1)
    assert isinstance(small["train"].encoded, DecodedPerBatch)
    order = epoch_order(len(splits["train"]), seed=3, epoch=1)
    cached = list(batches(splits["train"], spec, processor, prep, 5, order))
    lazy = list(batches(small["train"], spec, processor, prep, 5, order))
    assert len(cached) == len(lazy) == 3
    for (inputs, labels_a), (lazy_inputs, labels_b) in zip(cached, lazy, strict=True):
        assert torch.equal(inputs["pixel_values"], lazy_inputs["pixel_values"]) and torch.equal(labels_a, labels_b)


PEAK_SCRIPT = """
import io, json, sys, zipfile
from app.jobs.schemas import Hyperparameters
from app.tasktypes.specs import task_spec
from worker.training.data import prepare_splits

count, side = int(sys.argv[1]), int(sys.argv[2])
with zipfile.ZipFile(io.BytesIO(sys.stdin.buffer.read())) as zf:
    records = [{"split": "train", "label": n[0], "image": zf.read(n)} for n in zf.namelist()]
spec = task_spec("image_classification")
prep = spec.make_preprocessing(None, ["a", "b"], Hyperparameters(image_size=side))

def status(field):
    line = next(l for l in open("/proc/self/status") if l.startswith(field + ":"))
    return int(line.split()[1]) * 1024

open("/proc/self/clear_refs", "w").write("5")  # the peak restarts from here
before = status("VmRSS")
splits = prepare_splits(records, spec, None, prep)
print(json.dumps({"peak": status("VmHWM") - before, "cache": splits["train"].encoded.nbytes}))
"""


def peak_while_decoding(count: int, side: int) -> dict[str, int]:
    """Peak memory growth of a fresh process decoding `count` tiny PNGs at `side` pixels (prepare_splits alone)."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PEAK_SCRIPT), str(count), str(side)],
        input=pixel_zip(count), capture_output=True, cwd=ROOT, timeout=300, check=True,
    )  # fmt: skip
    return json.loads(done.stdout.decode().strip().splitlines()[-1])


def test_decoding_holds_the_cache_once_not_twice():
    measured = peak_while_decoding(600, 256)
    assert measured["cache"] == decoded_image_bytes(600, 256)  # 113 MiB
    # stacking a list of decoded images held them twice (2x the cache); written in place it is the cache itself
    assert measured["peak"] < 1.3 * measured["cache"], measured


def test_a_job_over_the_budget_is_refused_at_submit_and_one_that_fits_shows_its_memory(client):
    rows = DEFAULT_BUDGET_MB * MB // decoded_image_bytes(1, 1024) + 20
    dataset = client.post(
        "/datasets", files={"file": ("pixels.zip", pixel_zip(rows), "application/zip")},
        data={"task": "image_classification"},
    )  # fmt: skip
    assert dataset.status_code == 201, dataset.text
    jobs_before = client.get("/jobs").json()["items"]
    refused = client.post(
        "/jobs",
        json={"dataset_id": dataset.json()["id"], "base_model": "tiny-vit", "hyperparameters": {"image_size": 1024}},
    )
    assert refused.status_code == 422 and refused.headers["content-type"] == "application/problem+json"
    detail = refused.json()["detail"]
    assert f"{rows} images at 1024x1024" in detail and "FINETUNE_JOB_MEMORY_BUDGET_MB" in detail
    assert "lower image_size to 1020 or less" in detail and "train on at most 2730 examples" in detail, detail
    assert client.get("/jobs").json()["items"] == jobs_before  # nothing stored, nothing queued

    small = client.post(
        "/datasets", files={"file": ("colors.zip", image_zip(per_class=10), "application/zip")},
        data={"task": "image_classification"},
    )  # fmt: skip
    assert small.status_code == 201, small.text
    hp = {"image_size": 40, "max_steps": 1, "batch_size": 8, "optimizer": "sgd"}
    submitted = client.post(
        "/jobs", json={"dataset_id": small.json()["id"], "base_model": "tiny-vit", "hyperparameters": hp}
    )
    assert submitted.status_code == 201, submitted.text
    memory = submitted.json()["hyperparameters"]["expected_memory"]
    assert memory["data_cache_mb"] == round(decoded_image_bytes(20, 40) / MB, 1)
    assert memory["data_cache"] == "20 images at 40x40 pixels, 3 bytes a pixel"
    assert memory["data_cache_budget_mb"] == DEFAULT_BUDGET_MB
    assert memory["weights_mb"] is not None  # tiny-vit's folder is local: its safetensors header gives its size
    assert memory["training_state_mb"] == pytest.approx(2 * memory["weights_mb"], abs=0.1)  # SGD: grads, momentum
    assert memory["total_mb"] >= memory["data_cache_mb"] + memory["weights_mb"]
    job = wait_for_job(client, submitted.json()["id"])  # the worker reads the spec back, expected_memory and all
    assert job["status"] == "succeeded", job["error"]
    assert job["hyperparameters"]["expected_memory"] == memory
