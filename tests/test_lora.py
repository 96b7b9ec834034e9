"""LoRA adapters through peft (issue 14): what trains, small checkpoints that resume exactly, a merged export that plain
transformers loads with the training-time logits, jobs that train, register and serve, and 422s that say what to fix.
SIGKILL resumes of LoRA jobs are in tests/test_crash_safety.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

from app.artifacts.layout import model_key
from app.jobs.schemas import Hyperparameters
from app.tasktypes.types import TaskType
from tests.conftest import wait_for_job
from tests.factories import COLORS, image_bytes, image_zip
from tests.test_train_options import LABELS, image_records, imbalanced_records

LORA = {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.1, "target_modules": None}
# what each tiny model adapts by default: peft's choice for BERT, ViT's attention, the timm model's narrowing 1x1
# convolutions past its first stage and its deepest one (at a rank lowered from 4 to 1 to fit its 100k weights' budget)
DEFAULT_TARGETS = {
    "tiny-bert": ["query", "value"],
    "tiny-vit": ["q_proj", "v_proj"],
    "tiny-timm": [*(f"timm_model.blocks.{i}.0.conv_pwl" for i in range(2, 5)), "timm_model.conv_head"],
}


def lora_run(models_dir: Path, base: str, **options):
    from worker.training.setup import build_run

    text = base == "tiny-bert"
    task, labels = ("text_classification", LABELS) if text else ("image_classification", ["blue", "red"])
    records = imbalanced_records() if text else image_records()
    hp = Hyperparameters(adapter=LORA, batch_size=4, max_length=16, epochs=1, seed=5, **options)
    return build_run(task, models_dir / base, labels, records, hp, torch.device("cpu"))


def train_a_few_steps(run, steps: int = 3) -> None:
    from worker.training.data import batches
    from worker.training.loop import train_step

    order = torch.arange(len(run.splits["train"]))
    for i, (inputs, labels) in enumerate(batches(run.splits["train"], run.spec, run.processor, run.prep, 4, order)):
        if i == steps:
            break
        train_step(run, inputs, labels)


@pytest.mark.parametrize("base", ["tiny-bert", "tiny-vit", "tiny-timm"])
def test_lora_trains_the_adapter_and_the_head_only_and_checkpoints_just_those(models_dir: Path, base, tmp_path):
    from worker.training.checkpoint import load_checkpoint, save_checkpoint
    from worker.training.state import FitState

    run, notes = lora_run(models_dir, base)
    assert run.hp.adapter is not None
    trainable = {name for name, p in run.model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in trainable if ".lora_" in n} | set(run.head) and set(run.head) <= trainable
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable if ".lora_" in n}
    assert adapted == {target.rsplit(".", 1)[-1] for target in DEFAULT_TARGETS[base]}
    assert any(f"on {', '.join(DEFAULT_TARGETS[base])}" in note for note in notes)
    assert {id(p) for g in run.optimizer.param_groups for p in g["params"]} == {id(p) for p in run.trainable}
    frozen_before = {n: p.detach().clone() for n, p in run.model.named_parameters() if not p.requires_grad}
    train_a_few_steps(run)
    for name, p in run.model.named_parameters():
        if name in frozen_before:
            assert p.equal(frozen_before[name]), name  # the base model's weights never move

    save_checkpoint(tmp_path / "ck", run.model, run.optimizer, run.scheduler, FitState(step=3))
    with safe_open(str(tmp_path / "ck" / "model.safetensors"), framework="pt") as f:
        saved = set(f.keys())
    buffers = {name for name, _ in run.model.named_buffers()} & set(run.model.state_dict())
    assert saved == trainable | buffers  # BatchNorm statistics (tiny-timm) move in training mode: kept
    full = sum(p.numel() for p in run.model.parameters())
    assert sum(p.numel() for p in run.trainable) < full / 5

    resumed, _ = lora_run(models_dir, base)
    load_checkpoint(tmp_path / "ck", resumed.model, resumed.optimizer, resumed.scheduler)
    expected = run.model.state_dict()
    for name, tensor in resumed.model.state_dict().items():
        assert tensor.equal(expected[name]), name
    assert resumed.optimizer.state_dict()["state"].keys() == run.optimizer.state_dict()["state"].keys()


@pytest.mark.parametrize("base", ["tiny-bert", "tiny-timm"])
def test_a_merged_lora_model_loads_with_plain_transformers_and_gives_the_training_time_logits(
    models_dir: Path, base, tmp_path
):
    from peft import PeftModel

    from worker.training.adapters import save_merged
    from worker.training.data import batches

    run, _ = lora_run(models_dir, base, learning_rate=0.05)
    train_a_few_steps(run, steps=4)
    run.model.eval()
    inputs, _ = next(iter(batches(run.splits["test"], run.spec, run.processor, run.prep, 8)))
    with torch.no_grad():
        training_time = run.model(**inputs).logits
    folder = tmp_path / "export"
    save_merged(run.model, folder, base).save_pretrained(str(folder), safe_serialization=True)
    assert isinstance(run.model, PeftModel)  # the run keeps its adapter; the export is a merged copy

    auto = AutoModelForSequenceClassification if base == "tiny-bert" else AutoModelForImageClassification
    plain = auto.from_pretrained(str(folder)).eval()
    assert not any("lora" in name for name, _ in plain.named_parameters())
    with torch.no_grad():
        merged = plain(**inputs).logits
    assert torch.allclose(merged, training_time, atol=1e-5), (merged - training_time).abs().max()
    with torch.no_grad():  # the adapter moved the model: the merged weights are not the base model's
        untouched = auto.from_pretrained(str(models_dir / base), num_labels=2, ignore_mismatched_sizes=True).eval()
        base_logits = untouched(**inputs).logits
    assert not torch.allclose(base_logits, training_time, atol=1e-3)

    # the adapter files beside the export: peft loads them onto the base model (with a head for these labels)
    config = json.loads((folder / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == base and config["r"] == (LORA["r"] if base == "tiny-bert" else 1)
    fresh = auto.from_pretrained(str(models_dir / base), num_labels=2, ignore_mismatched_sizes=True)
    with torch.no_grad():
        adapted = PeftModel.from_pretrained(fresh, str(folder / "adapter")).eval()(**inputs).logits
    assert torch.allclose(adapted, training_time, atol=1e-5)


def test_conv_lora_spreads_over_the_depth_at_a_rank_within_the_budget(models_dir: Path):
    """EfficientNet-style models: the narrowing 1x1 convolutions past the first stage (never a squeeze-excite gate)
    and the deepest one, at the highest rank up to the asked one whose updates stay within CONV_ADAPTER_BUDGET; the
    job's note says so."""
    from app.jobs.adapters import CONV_ADAPTER_BUDGET, default_adapter, model_skeleton

    model = model_skeleton(models_dir / "tiny-timm", TaskType.image_classification, 2)
    modules = dict(model.named_modules())
    total = sum(p.numel() for p in model.parameters())
    targets, rank, why = default_adapter(model, 4)
    assert targets == DEFAULT_TARGETS["tiny-timm"] and rank == 1 and "lowered from 4" in why
    cost = sum(modules[t].in_channels + modules[t].out_channels for t in targets)
    assert rank * cost <= CONV_ADAPTER_BUDGET * total < (rank + 1) * cost  # the highest rank that fits
    assert all(modules[t].out_channels < modules[t].in_channels for t in targets[:-1])
    first_stage = modules["timm_model.blocks.1.0.conv_pwl"]  # narrowing, but the narrowest: left as it is
    assert first_stage.out_channels < first_stage.in_channels
    assert first_stage.out_channels < min(modules[t].out_channels for t in targets[:-1])
    assert not any(".se." in name for name in targets)
    run, notes = lora_run(models_dir, "tiny-timm")
    lora_weights = sum(p.numel() for n, p in run.model.named_parameters() if ".lora_" in n)
    assert lora_weights == rank * cost <= CONV_ADAPTER_BUDGET * total
    assert any("r=1 (r=4 asked, lowered" in note for note in notes), notes
    asked = default_adapter(model, 64)
    assert asked[0] == targets and asked[1] == rank  # a higher rank asked is lowered to the same
    small = default_adapter(model, 1)
    assert small[1] == 1 and "lowered" not in small[2]


def test_lora_on_a_conv_model_gets_a_higher_floor_of_steps():
    """ "auto" epochs: at least ADAPTER_MIN_STEPS steps for LoRA on a convolutional model; text keeps its floor."""
    from app.jobs.defaults import ADAPTER_MIN_STEPS, apply_defaults

    image, lora = "image_classification", {"type": "lora"}
    full = apply_defaults(Hyperparameters(), image, 1000, "conv_image")
    adapted = apply_defaults(Hyperparameters(adapter=lora), image, 1000, "conv_image")
    assert (full.epochs, adapted.epochs) == (5, math.ceil(ADAPTER_MIN_STEPS["conv_image"] / 32))  # 32 steps an epoch
    assert "at least 450 steps (LoRA on a convolutional model" in adapted.auto["epochs"]
    vit = apply_defaults(Hyperparameters(adapter=lora), image, 1000, "vision_transformer")
    text = apply_defaults(Hyperparameters(adapter=lora), "text_classification", 1000, "text_encoder")
    assert (vit.epochs, text.epochs) == (5, apply_defaults(Hyperparameters(), "text_classification", 1000).epochs)


def test_lora_defaults_take_the_adapter_learning_rate():
    from app.jobs.defaults import apply_defaults

    full = apply_defaults(Hyperparameters(), "text_classification", 100)
    lora = apply_defaults(Hyperparameters(adapter={"type": "lora"}), "text_classification", 100)
    assert lora.learning_rate is not None and full.learning_rate is not None
    assert lora.learning_rate > full.learning_rate and "adapter" in lora.auto["learning_rate"]
    assert lora.adapter is not None and (lora.adapter.r, lora.adapter.alpha, lora.adapter.dropout) == (8, 16, 0.0)


@pytest.fixture(scope="module")
def lora_image_dataset(service, key):
    with service.client(key) as client:
        upload = {"file": ("colors.zip", image_zip(per_class=12), "application/zip")}
        answer = client.post("/datasets", files=upload, data={"task": "image_classification"})
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


@pytest.mark.parametrize("base", ["tiny-bert", "tiny-timm"])
def test_a_lora_job_trains_registers_a_merged_model_and_serves(service, client, text_dataset, lora_image_dataset, base):
    dataset = text_dataset if base == "tiny-bert" else lora_image_dataset
    hp = {"adapter": LORA, "epochs": 2, "batch_size": 8, "max_length": 16, "early_stopping": None}
    answer = client.post("/jobs", json={"dataset_id": dataset, "base_model": base, "hyperparameters": hp})
    assert answer.status_code == 201, answer.text
    assert answer.json()["hyperparameters"]["adapter"] == LORA
    job = wait_for_job(client, answer.json()["id"])
    assert job["status"] == "succeeded", job["error"]

    report = client.get(f"/jobs/{job['id']}/report").json()
    assert report["adapter"]["type"] == "lora" and report["adapter"]["target_modules"] == DEFAULT_TARGETS[base]
    assert 0 < report["trainable_parameters"] < report["total_parameters"]
    assert report["trainable_share"] == pytest.approx(
        report["trainable_parameters"] / report["total_parameters"], abs=1e-6
    )
    metrics = client.get(f"/models/{job['model_id']}").json()["metrics"]
    assert metrics["adapter"]["type"] == "lora" and metrics["trainable_share"] == report["trainable_share"]
    events = client.get(f"/jobs/{job['id']}/events", params={"limit": 1000}).json()["items"]
    rank = "r=4" if base == "tiny-bert" else "r=1 (r=4 asked"  # the conv default fits the budget
    assert any(e["message"].startswith(f"adapter lora {rank}") for e in events)

    checkpoints = client.get(f"/jobs/{job['id']}/checkpoints").json()
    folder = service.store().local_dir(model_key(job["model_id"]))
    exported = (folder / "model.safetensors").stat().st_size
    stored = service.store().local_dir(checkpoints[-1]["storage_key"]) / "model.safetensors"
    assert stored.stat().st_size * 3 < exported  # the checkpoint holds the adapter and the head, the export it all
    assert (folder / "adapter" / "adapter_model.safetensors").is_file()
    assert not (folder / "adapter_config.json").exists()  # else transformers would load it as an adapter model

    if base == "tiny-bert":
        answer = client.post("/predict", json={"model": job["model_id"], "texts": ["a great film", "awful"]})
    else:
        import base64

        encoded = [base64.b64encode(image_bytes(color, seed=99)).decode() for color in COLORS.values()]
        answer = client.post("/predict", json={"model": job["model_id"], "images": encoded})
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["predictions"]) == 2


@pytest.mark.parametrize(
    ("base", "adapter", "options", "says"),
    [
        ("tiny-bert", {"target_modules": ["nope"]}, {}, "['nope'] name no layer of this model"),
        ("tiny-bert", {"target_modules": ["nope"]}, {}, "dense, key, position_embeddings, query"),  # what exists
        ("tiny-timm", {"target_modules": ["conv_dw"]}, {}, "grouped (depthwise) convolutions"),
        ("tiny-timm", {"target_modules": ["conv_dw"]}, {}, "this model's are conv, conv_exp, conv_expand, conv_head"),
        ("tiny-bert", {"target_modules": ["classifier"]}, {}, "the classification head"),
        ("tiny-bert", {"target_modules": ["LayerNorm"]}, {}, "cannot adapt (LayerNorm"),
        ("tiny-bert", {}, {"freeze": "backbone"}, 'freeze "backbone"'),
        ("tiny-bert", {}, {"strategy": "head_only"}, "head_only"),
        ("tiny-bert", {}, {"freeze": "last_n", "trainable_layers": 1}, "cannot be combined"),
        ("tiny-bert", {"type": "ia3"}, {}, "adapter.type"),
        ("tiny-bert", {"r": 0}, {}, "adapter.r"),
        ("tiny-bert", {"dropout": 1.0}, {}, "adapter.dropout"),
        ("tiny-bert", {"alpha": 0}, {}, "adapter.alpha"),
        ("tiny-bert", {"target_modules": []}, {}, "adapter.target_modules"),
        ("tiny-bert", {"rank": 8}, {}, "adapter.rank"),
    ],
)
def test_bad_adapters_are_422s_that_say_what_to_fix(
    client, text_dataset, lora_image_dataset, base, adapter, options, says
):
    dataset = text_dataset if base == "tiny-bert" else lora_image_dataset
    hp = {"adapter": {"type": "lora", **adapter}, **options, "max_steps": 1}
    answer = client.post("/jobs", json={"dataset_id": dataset, "base_model": base, "hyperparameters": hp})
    assert answer.status_code == 422, answer.text
    assert says in answer.json()["detail"], answer.json()["detail"]
