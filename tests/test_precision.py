"""Precision and out-of-memory recovery (issue 16 item 4): what each precision becomes on a CPU worker, bf16 autocast
and the fp16 gradient scaler in a real step, the scaler's state and the halved micro-batch in checkpoints, and a
CUDA out-of-memory error injected at a chosen step (FINETUNE_TEST_OOM_AT_STEP, test only) that halves the
micro-batch and ends where a run started at the halved micro-batch ends, in-process and on a real worker."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from app import processes
from app.artifacts.layout import model_key
from app.jobs.defaults import AUTO_PRECISION, apply_defaults
from app.jobs.schemas import Hyperparameters
from app.jobs.stop_reasons import JobFailed
from app.processes import worker_command
from tests.conftest import wait_for_job
from tests.factories import text_csv, text_rows
from worker.training.checkpoint import load_checkpoint, save_checkpoint
from worker.training.precision import Precision, choose_precision
from worker.training.state import FitState

LABELS = ["negative", "positive"]
CPU = torch.device("cpu")
# 4 optimizer steps per epoch; an evaluation (and a checkpoint) every 2 steps.
HP = {"batch_size": 8, "epochs": 2, "max_length": 16, "early_stopping": None, "eval_every_steps": 2, "seed": 3}


def split_records() -> list[dict]:
    """32 training rows (both classes), 8 validation, 8 test."""
    splits = ["train", "train", "train", "train", "val", "test"]
    return [{**r, "split": splits[i % 6]} for i, r in enumerate(text_rows(per_class=24, seed=7))]


class Hooks:
    """The loop's reports kept in memory; checkpoints written to `folder` (one per evaluation) when given."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder, self.events = folder, []

    def log_step(self, step, epoch, loss, lr, samples_per_s) -> None:
        pass

    def log_eval(self, step, epoch, values) -> None:
        pass

    def at_step_boundary(self, run) -> None:
        pass

    def save_checkpoint(self, run, metric_name, value, is_best) -> None:
        if self.folder is not None:
            folder = self.folder / f"step-{run.state.step}"
            save_checkpoint(folder, run.model, run.optimizer, run.scheduler, run.state, run.scaler)

    def event(self, kind: str, message: str) -> None:
        self.events.append((kind, message))


@pytest.fixture(scope="module")
def no_dropout(models_dir: Path) -> Path:
    """tiny-bert without dropout: runs whose micro-batches differ draw different dropout masks, and this takes
    that out of the comparison (what remains is the order of float sums)."""
    folder = models_dir / "tiny-bert-no-dropout"
    if not folder.exists():
        shutil.copytree(models_dir / "tiny-bert", folder)
        config = json.loads((folder / "config.json").read_text())
        config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def build(base: Path, oom_at_step: int | None = None, **overrides):
    from worker.training.setup import build_run

    hp = Hyperparameters(**{**HP, **overrides})
    run, _ = build_run("text_classification", base, LABELS, split_records(), hp, CPU)
    run.oom_at_step = oom_at_step
    return run


def weights(run) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in run.model.named_parameters()}


def test_what_each_precision_becomes_on_a_cpu_worker():
    chosen = {asked: choose_precision(asked, CPU) for asked in ("auto", "fp32", "bf16", "fp16")}
    assert {asked: p.name for asked, p in chosen.items()} == {
        "auto": "fp32", "fp32": "fp32", "bf16": "bf16", "fp16": "fp32",
    }  # fmt: skip
    assert "CPU" in chosen["auto"].reason and "auto" in chosen["auto"].reason
    assert "fp16 was asked for" in chosen["fp16"].reason and "CPU" in chosen["fp16"].reason
    assert "CPU autocast" in chosen["bf16"].reason
    with pytest.raises(ValueError, match="unknown precision"):
        choose_precision("fp8", CPU)


@pytest.mark.parametrize(("precision", "dtype"), [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_a_training_step_computes_in_the_chosen_precision(models_dir: Path, precision: str, dtype: torch.dtype):
    from worker.training.data import batches
    from worker.training.loop import train_step

    run = build(models_dir / "tiny-bert", precision=precision)
    assert run.precision.name == precision and run.scaler is None
    seen: list[torch.dtype] = []
    hook = run.model.classifier.register_forward_hook(lambda _m, _a, out: seen.append(out.dtype))
    inputs, labels = next(iter(batches(run.splits["train"], run.spec, run.processor, run.prep, 8)))
    before = weights(run)
    loss = train_step(run, inputs, labels)
    hook.remove()
    assert seen == [dtype] and 0 < loss < 10
    assert any(not torch.equal(before[n], p) for n, p in weights(run).items())
    assert all(p.dtype == torch.float32 for p in run.model.parameters())  # autocast: the weights stay fp32


def test_fp16_steps_through_the_gradient_scaler(models_dir: Path):
    """A CPU worker trains fp16 jobs in fp32; the scaler's path (scale, unscale before clipping, step, update) is
    driven here on CPU autocast as a GPU would drive it."""
    from worker.training.data import batches
    from worker.training.loop import train_step

    run = build(models_dir / "tiny-bert", precision="fp16")
    assert run.precision.name == "fp32" and run.scaler is None
    run.precision, run.scaler = Precision("fp16", "forced for the test"), torch.amp.GradScaler("cpu", init_scale=2.0**8)
    batch = list(batches(run.splits["train"], run.spec, run.processor, run.prep, 8))
    before = weights(run)
    losses = [train_step(run, *batch[i]) for i in range(2)]
    assert all(0 < loss < 10 for loss in losses)
    assert run.scaler.get_scale() == 2.0**8  # no overflow at this scale: no step skipped, no backoff
    assert run.scaler.state_dict()["_growth_tracker"] == 2
    assert any(not torch.equal(before[n], p) for n, p in weights(run).items())


def test_the_scaler_and_the_halved_micro_batch_survive_a_checkpoint(tmp_path: Path):
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=7)
    scaler.scale(torch.ones(()))
    scaler.update(new_scale=96.0)
    state = FitState(step=5, micro_batches=4)
    save_checkpoint(tmp_path / "ckpt", model, optimizer, scheduler, state, scaler)

    fresh = torch.amp.GradScaler("cpu")
    restored = load_checkpoint(tmp_path / "ckpt", model, optimizer, scheduler, fresh)
    assert restored.micro_batches == 4
    assert fresh.state_dict() == scaler.state_dict() and fresh.get_scale() == 96.0
    # A checkpoint without a scaler (fp32, bf16) resumed in fp16 starts from a fresh scale.
    save_checkpoint(tmp_path / "plain", model, optimizer, scheduler, state)
    other = torch.amp.GradScaler("cpu", init_scale=512.0)
    load_checkpoint(tmp_path / "plain", model, optimizer, scheduler, other)
    assert other.get_scale() == 512.0


def test_out_of_memory_halves_the_micro_batch_and_ends_where_a_halved_run_ends(no_dropout: Path, tmp_path: Path):
    from worker.training.loop import fit

    hooks = Hooks(tmp_path)
    run = build(no_dropout, oom_at_step=3)
    fit(run, hooks)
    assert run.total_steps == 8 and run.scheduler.last_epoch == 8  # the schedule counted optimizer steps only
    assert [kind for kind, _ in hooks.events] == ["out_of_memory"]
    message = hooks.events[0][1]
    assert "at step 3 with micro-batches of 8 examples" in message and "2 micro-batches of 4" in message, message
    assert run.state.micro_batches == 2 and run.hp.gradient_accumulation_steps == 1

    halved = build(no_dropout, gradient_accumulation_steps=2)
    fit(halved, Hooks())
    recovered, reference = weights(run), weights(halved)
    for name, tensor in reference.items():  # the first two steps summed 8 rows at once instead of 4 + 4
        torch.testing.assert_close(recovered[name], tensor, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")

    # Resumed from the checkpoint after the halving, the run keeps the halved micro-batch and ends bit for bit.
    resumed = build(no_dropout)
    resumed.state = load_checkpoint(tmp_path / "step-4", resumed.model, resumed.optimizer, resumed.scheduler)
    assert resumed.micro_batches == 2
    fit(resumed, Hooks())
    assert all(torch.equal(recovered[name], tensor) for name, tensor in weights(resumed).items())


def test_the_redone_step_is_the_one_a_halved_run_takes(models_dir: Path):
    """With dropout: the step is redone from the random state it started with, so a failure at the first step
    leaves exactly the run that started at the halved micro-batch."""
    from worker.training.loop import fit

    run = build(models_dir / "tiny-bert", oom_at_step=1, max_steps=3)
    fit(run, Hooks())
    halved = build(models_dir / "tiny-bert", gradient_accumulation_steps=2, max_steps=3)  # build_run seeds torch
    fit(halved, Hooks())
    assert run.state.micro_batches == 2
    assert all(torch.equal(weights(run)[name], tensor) for name, tensor in weights(halved).items())


def test_out_of_memory_at_a_micro_batch_of_one_fails_with_what_to_do(models_dir: Path):
    from worker.training.loop import fit

    run = build(models_dir / "tiny-bert", oom_at_step=2, batch_size=2, gradient_accumulation_steps=2)
    with pytest.raises(JobFailed, match="at step 2 with a micro-batch of one example.*max_length"):
        fit(run, Hooks())


def test_a_job_recovers_from_out_of_memory_on_a_worker(service, client, no_dropout: Path):
    """A worker whose jobs hit an out-of-memory error at step 3 (in a pool of its own) against the session's worker
    running the same job started at the halved micro-batch; that one asks for fp16, which a CPU worker runs in fp32."""
    name = "worker-oom"
    env = {"FINETUNE_WORKER_POOL": "oom", "FINETUNE_TEST_OOM_AT_STEP": "3"}
    worker = service.start(name, worker_command(name, "oom"), env)
    try:
        upload = {"file": ("r.csv", text_csv(text_rows(per_class=24, seed=7)))}
        dataset = client.post("/datasets", files=upload, data={"task": "text_classification"}).json()["id"]
        hp = {**HP, "epochs": 1, "max_length": 16}
        wait_for_pool(client, "oom")
        submitted = {
            "oom": client.post("/jobs", json={"dataset_id": dataset, "base_model": no_dropout.name,
                                              "hyperparameters": hp, "resources": {"pool": "oom"}}),
            "halved": client.post("/jobs", json={"dataset_id": dataset, "base_model": no_dropout.name,
                                                 "hyperparameters": {**hp, "gradient_accumulation_steps": 2,
                                                                     "precision": "fp16"}}),
        }  # fmt: skip
        assert all(a.status_code == 201 for a in submitted.values()), [a.text for a in submitted.values()]
        jobs = {k: wait_for_job(client, a.json()["id"]) for k, a in submitted.items()}
    finally:
        processes.stop([worker])
    assert all(job["status"] == "succeeded" for job in jobs.values()), [j["error"] for j in jobs.values()]
    events = {k: client.get(f"/jobs/{job['id']}/events", params={"limit": 1000}).json()["items"] for k, job in
              jobs.items()}  # fmt: skip
    oom = [e["message"] for e in events["oom"] if e["kind"] == "out_of_memory"]
    assert len(oom) == 1 and "at step 3" in oom[0] and "2 micro-batches of 4" in oom[0], oom
    assert not [e for e in events["halved"] if e["kind"] == "out_of_memory"]

    auto = {k: job["hyperparameters"]["auto"]["precision"] for k, job in jobs.items()}
    assert auto["oom"].startswith("fp32: the run is on this worker's CPU"), auto
    assert auto["halved"].startswith("fp32: fp16 was asked for"), auto
    assert jobs["halved"]["hyperparameters"]["precision"] == "fp16"  # what the user asked stays; auto says why
    precision_events = {k: [e["message"] for e in v if e["kind"] == "precision"] for k, v in events.items()}
    assert precision_events["halved"] == [f"training in {auto['halved']}"], precision_events

    store = service.store()
    recovered, reference = (
        load_file(str(store.local_dir(model_key(jobs[k]["model_id"])) / "model.safetensors")) for k in ("oom", "halved")
    )
    assert recovered.keys() == reference.keys()
    for name, tensor in reference.items():
        torch.testing.assert_close(recovered[name], tensor, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def test_precision_is_one_of_four_and_auto_is_explained_at_submit(client, text_dataset):
    bad = client.post("/jobs", json={"dataset_id": text_dataset, "base_model": "tiny-bert",
                                     "hyperparameters": {"precision": "fp8"}})  # fmt: skip
    assert bad.status_code == 422 and "precision" in bad.text
    assert apply_defaults(Hyperparameters(**HP), "text_classification", 32).auto["precision"] == AUTO_PRECISION
    assert "precision" not in apply_defaults(Hyperparameters(**HP, precision="bf16"), "text_classification", 32).auto


def wait_for_pool(client, pool: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p["name"] == pool and p["workers"] for p in client.get("/pools").json()):
            return
        time.sleep(0.5)
    raise TimeoutError(f"no worker of pool {pool} came alive")
