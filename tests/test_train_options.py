"""Training options that fit the data (issue 14): class weights, label smoothing, gradient accumulation, freezing by
depth. The loss is checked against one computed by hand from the model's logits; jobs run on the real service."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from app.jobs.schemas import Hyperparameters
from tests.conftest import wait_for_job
from tests.factories import text_csv, text_rows

LABELS = ["negative", "positive"]


def imbalanced_records(positives: int = 4, negatives: int = 20) -> list[dict]:
    rows = [r for r in text_rows(per_class=max(positives, negatives)) if r["label"] == "positive"][:positives]
    rows += [r for r in text_rows(per_class=max(positives, negatives)) if r["label"] == "negative"][:negatives]
    records = [{**r, "split": "train"} for r in rows]
    return records + [{**r, "split": split} for r in text_rows(per_class=2) for split in ("val", "test")]


def hand_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Weighted, smoothed cross-entropy written out: each example's target is (1 - e) on its class plus e / C on every
    class, each class's term scaled by its weight, the sum divided by the weights of the examples' classes."""
    logp = logits.double().log_softmax(dim=-1)
    w = weights.double()
    picked = -logp[torch.arange(len(labels)), labels] * w[labels]
    spread = -(logp * w).sum(dim=-1) / logits.shape[-1]
    return ((1 - smoothing) * picked + smoothing * spread).sum() / w[labels].sum()


@pytest.mark.parametrize(
    ("class_weights", "smoothing", "accumulation"),
    [("balanced", 0.0, 1), ("balanced", 0.0, 4), ({"positive": 3.0}, 0.2, 2), ("none", 0.1, 1), ("none", 0.0, 2)],
)
def test_training_loss_is_the_weighted_smoothed_cross_entropy(models_dir: Path, class_weights, smoothing, accumulation):
    from worker.training.data import batches
    from worker.training.loop import train_step
    from worker.training.setup import build_run

    records = imbalanced_records()
    hp = Hyperparameters(
        class_weights=class_weights, label_smoothing=smoothing, gradient_accumulation_steps=accumulation,
        batch_size=8, max_length=16, epochs=1,
    )  # fmt: skip
    run, _ = build_run("text_classification", models_dir / "tiny-bert", LABELS, records, hp, torch.device("cpu"))
    with torch.no_grad():  # a confident head: near-uniform logits (a fresh head's) would hide what smoothing does
        run.model.classifier.weight.mul_(100)
    train = run.splits["train"]
    counts = torch.bincount(train.labels, minlength=2).double()  # 20 negative, 4 positive
    expected_weights = {
        "balanced": len(train) / (2 * counts),  # scikit-learn's "balanced": n / (classes x count)
        "none": torch.ones(2, dtype=torch.float64),
    }.get(class_weights if isinstance(class_weights, str) else "", torch.tensor([1.0, 3.0], dtype=torch.float64))
    if class_weights == "none":
        assert run.class_weights is None
    else:
        assert torch.allclose(run.class_weights.double(), expected_weights)
    order = torch.arange(len(train)).roll(-2)  # a fixed batch of both classes: rows 2..9, 2 positive, 6 negative
    inputs, labels = next(iter(batches(train, run.spec, run.processor, run.prep, 8, order)))
    assert set(labels.tolist()) == {0, 1}
    run.model.eval()  # no dropout, so the step's forward passes give exactly these logits
    with torch.no_grad():
        logits = run.model(**inputs).logits
    expected = hand_loss(logits, labels, expected_weights, smoothing).item()
    plain = torch.nn.functional.cross_entropy(logits, labels).item()
    before = [p.detach().clone() for p in run.trainable]
    assert train_step(run, inputs, labels) == pytest.approx(expected, abs=1e-6)
    if class_weights != "none" or smoothing:
        assert abs(expected - plain) > 1e-4  # the options change the loss (by 100x the tolerance above)
    assert run.scheduler.last_epoch == 1  # one optimizer step, however many micro-batches
    assert any(not torch.equal(b, p) for b, p in zip(before, run.trainable, strict=True))


def test_accumulated_micro_batches_give_the_whole_batchs_gradient(models_dir: Path):
    from worker.training.data import batches
    from worker.training.loop import train_step
    from worker.training.setup import build_run

    grads = []
    for steps in (1, 4):
        hp = Hyperparameters(
            class_weights="balanced", gradient_accumulation_steps=steps, batch_size=8, max_length=16, epochs=1,
            max_grad_norm=None,
        )  # fmt: skip
        run, _ = build_run("text_classification", models_dir / "tiny-bert", LABELS, imbalanced_records(), hp,
                           torch.device("cpu"))  # fmt: skip
        order = torch.arange(len(run.splits["train"])).roll(-2)
        inputs, labels = next(iter(batches(run.splits["train"], run.spec, run.processor, run.prep, 8, order)))
        run.model.eval()
        train_step(run, inputs, labels)
        grads.append(torch.cat([p.grad.flatten() for p in run.trainable]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-4)


def test_a_job_with_accumulation_counts_optimizer_steps_and_stores_its_options(client, text_dataset):
    hp = {
        "batch_size": 8, "gradient_accumulation_steps": 4, "epochs": 2, "max_length": 16,
        "class_weights": "balanced", "label_smoothing": 0.1, "early_stopping": None,
    }  # fmt: skip
    job = client.post("/jobs", json={"dataset_id": text_dataset, "base_model": "tiny-bert", "hyperparameters": hp})
    assert job.status_code == 201, job.text
    stored = job.json()["hyperparameters"]
    assert stored["gradient_accumulation_steps"] == 4 and stored["batch_size"] == 8
    assert stored["class_weights"] == "balanced" and stored["label_smoothing"] == 0.1
    done = wait_for_job(client, job.json()["id"])
    assert done["status"] == "succeeded", done["error"]
    train_rows = sum(client.get(f"/datasets/{text_dataset}").json()["counts"]["train"].values())
    optimizer_steps = 2 * math.ceil(train_rows / 8)  # batches of 8, not micro-batches of 2
    assert done["total_steps"] == done["step"] == optimizer_steps
    losses = client.get(f"/jobs/{done['id']}/metrics", params={"name": "train_loss", "limit": 500}).json()["items"]
    assert [m["step"] for m in losses] == list(range(1, optimizer_steps + 1))


@pytest.mark.parametrize(
    ("hp", "says"),
    [
        ({"class_weights": {"positive": 2.0, "neutral": 1.0}}, "'neutral'"),
        ({"class_weights": {"positive": 0.0}}, "positive"),
        ({"class_weights": {"positive": -1.0}}, "positive"),
        ({"class_weights": "inverse"}, "class_weights"),
        ({"class_weights": {}}, "weighs nothing"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"label_smoothing": -0.1}, "label_smoothing"),
        ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps"),
        ({"batch_size": 10, "gradient_accumulation_steps": 4}, "multiple of 4"),
    ],
)
def test_bad_training_options_are_422s_that_say_what_to_fix(client, text_dataset, hp, says):
    answer = client.post("/jobs", json={"dataset_id": text_dataset, "base_model": "tiny-bert", "hyperparameters": hp})
    assert answer.status_code == 422, answer.text
    assert says in answer.json()["detail"]


def test_the_imbalance_warning_names_the_option_that_helps(client):
    rows = [r for r in text_rows(per_class=60) if r["label"] == "negative"]
    rows += [r for r in text_rows(per_class=5) if r["label"] == "positive"]
    answer = client.post("/datasets", files={"file": ("i.csv", text_csv(rows))}, data={"task": "text_classification"})
    assert answer.status_code == 201, answer.text
    assert any("imbalanced" in w and '"class_weights": "balanced"' in w for w in answer.json()["warnings"])


# --- freezing by depth ------------------------------------------------------------------------------------------

IMAGE_RECORDS_PER_CLASS = 4


def image_records() -> list[dict]:
    from tests.factories import COLORS, image_bytes

    return [
        {"image": image_bytes(color, seed=c * 100 + i), "label": name, "split": split}
        for c, (name, color) in enumerate(COLORS.items())
        for i in range(IMAGE_RECORDS_PER_CLASS)
        for split in ("train", "val", "test")
    ]


# What stays trainable with the last block: that block, what follows the block list, and the head, by name.
LAST_BLOCK = {
    "tiny-bert": ("bert.encoder.layer.1.", "bert.layers.1.", "bert.pooler.", "classifier."),
    "tiny-vit": ("vit.encoder.layer.1.", "vit.layers.1.", "vit.layernorm.", "classifier."),  # transformers 4 / 5
}


@pytest.mark.parametrize("base", ["tiny-bert", "tiny-vit", "tiny-timm"])
def test_last_n_trains_exactly_the_last_blocks_what_follows_them_and_the_head(models_dir: Path, base):
    from worker.training.setup import build_run

    text = base == "tiny-bert"
    task, labels = ("text_classification", LABELS) if text else ("image_classification", ["blue", "red"])
    records = imbalanced_records() if text else image_records()
    hp = Hyperparameters(freeze="last_n", trainable_layers=1, batch_size=4, max_length=16, epochs=1)
    run, _ = build_run(task, models_dir / base, labels, records, hp, torch.device("cpu"))
    trainable = {name for name, p in run.model.named_parameters() if p.requires_grad}
    if base in LAST_BLOCK:
        expected = {name for name, _ in run.model.named_parameters() if name.startswith(LAST_BLOCK[base])}
    else:  # timm's test_efficientnet: blocks (stages) 0..n-1, then conv_head, bn2 and the classifier
        stages = len(run.model.timm_model.blocks)
        last = (f"timm_model.blocks.{stages - 1}.", "timm_model.conv_head.", "timm_model.bn2.")
        expected = {name for name, _ in run.model.named_parameters() if name.startswith(last)} | set(run.head)
    assert trainable == expected and set(run.head) <= trainable
    counted = sum(p.numel() for name, p in run.model.named_parameters() if name in expected)
    assert sum(p.numel() for p in run.trainable) == counted < sum(p.numel() for p in run.model.parameters())
    assert {id(p) for g in run.optimizer.param_groups for p in g["params"]} == {id(p) for p in run.trainable}


def test_block_lists_are_found_by_name_or_not_at_all():
    from app.jobs.blocks import find_blocks

    bert = [f"bert.encoder.layer.{i}.attention.self.query.weight" for i in range(6)] + ["bert.pooler.dense.weight"]
    assert (find_blocks(bert).prefix, find_blocks(bert).count) == ("bert.encoder.layer", 6)
    efficientnet = [f"blocks.{s}.{b}.conv_pw.weight" for s in range(7) for b in range(2)] + ["conv_head.weight"]
    assert (find_blocks(efficientnet).prefix, find_blocks(efficientnet).count) == ("blocks", 7)  # stages, not blocks
    swin = [f"swin.encoder.layers.{s}.blocks.{b}.attention.weight" for s in range(4) for b in range(2)]
    assert (find_blocks(swin).prefix, find_blocks(swin).count) == ("swin.encoder.layers", 4)
    assert find_blocks(["conv1.weight", "layer1.0.conv1.weight", "layer4.1.conv2.weight", "fc.weight"]) is None


def test_last_n_is_refused_at_submit_when_blocks_are_missing_or_too_few(client, text_dataset, tmp_path):
    from safetensors.torch import save_file

    from app.base_models.resolve import BaseModelRef
    from app.datasets.tables import Dataset
    from app.errors import InvalidInput
    from app.jobs.spec_checks import check_spec
    from app.tasktypes.types import TaskType

    hp = {"freeze": "last_n", "trainable_layers": 3, "max_steps": 1}
    answer = client.post("/jobs", json={"dataset_id": text_dataset, "base_model": "tiny-bert", "hyperparameters": hp})
    assert answer.status_code == 422, answer.text
    assert "trainable_layers 3 is more than the 2 blocks" in answer.json()["detail"]
    for wrong, says in (
        ({"freeze": "last_n"}, "needs trainable_layers"),
        ({"trainable_layers": 1}, "applies only with freeze"),
        ({"freeze": "last_n", "trainable_layers": 1, "strategy": "head_only"}, "cannot apply"),
        ({"freeze": "last_n", "trainable_layers": 0}, "trainable_layers"),
    ):
        answer = client.post(
            "/jobs", json={"dataset_id": text_dataset, "base_model": "tiny-bert", "hyperparameters": wrong}
        )
        assert answer.status_code == 422 and says in answer.json()["detail"], answer.text
    # A ResNet in timm's naming (layer1..layer4) has no block list this rule recognises: a 422 that says so.
    folder = tmp_path / "resnet-like"
    folder.mkdir()
    names = ["conv1.weight", "layer1.0.conv1.weight", "layer2.0.conv1.weight", "fc.weight"]
    save_file({name: torch.zeros(2, 2) for name in names}, str(folder / "model.safetensors"))
    dataset = Dataset(name="d", labels=LABELS, counts={s: {"a": 3} for s in ("train", "val", "test")})
    spec = Hyperparameters(freeze="last_n", trainable_layers=1)
    with pytest.raises(InvalidInput, match="no encoder blocks or stages"):
        check_spec(spec, dataset, BaseModelRef("resnet-like", None, folder), None, TaskType.image_classification)


def test_a_last_n_job_trains_and_stores_its_choice(client, text_dataset):
    hp = {"freeze": "last_n", "trainable_layers": 1, "max_steps": 2, "batch_size": 8, "max_length": 16}
    job = client.post("/jobs", json={"dataset_id": text_dataset, "base_model": "tiny-bert", "hyperparameters": hp})
    assert job.status_code == 201, job.text
    assert job.json()["hyperparameters"]["freeze"] == "last_n"
    assert job.json()["hyperparameters"]["trainable_layers"] == 1
    done = wait_for_job(client, job.json()["id"])
    assert done["status"] == "succeeded", done["error"]
