"""Crash safety with real processes: kill -9 a worker mid-epoch, SIGTERM a worker, cancel while no worker lives.

The job resumed after SIGKILL must end with the same weights and report as the same job run uninterrupted.
"""

from __future__ import annotations

import signal

import pytest
from safetensors.torch import load_file

from app.artifacts.layout import model_key
from tests.conftest import running_service, wait_for_job, wait_for_step
from tests.factories import image_zip, text_csv, text_rows
from tests.stacks import private_stack

FAST_LEASES = {
    "FINETUNE_LEASE_SECONDS": "4",
    "FINETUNE_HEARTBEAT_SECONDS": "1",
    "FINETUNE_REAPER_INTERVAL_SECONDS": "1",
}
HP = {"epochs": 2, "batch_size": 8, "eval_every_steps": 10, "early_stopping": None, "seed": 11, "max_length": 16}


@pytest.fixture(scope="module")
def crashy(tmp_path_factory, models_dir):
    """A service of its own (fast leases, its own database and queue), a team, and a 800-row dataset."""
    var_dir = tmp_path_factory.mktemp("var-crash")
    with (
        private_stack(redis_db=13) as stack,
        running_service(var_dir, models_dir, stack, settings=FAST_LEASES) as service,
        service.client(service.new_key("crash-team")) as client,
    ):
        upload = {"file": ("big.csv", text_csv(text_rows(400, seed=5)))}
        dataset = client.post("/datasets", files=upload, data={"task": "text_classification"})
        assert dataset.status_code == 201, dataset.text
        yield service, client, dataset.json()["id"]


def _submit(client, dataset_id: str) -> str:
    answer = client.post("/jobs", json={"dataset_id": dataset_id, "base_model": "tiny-bert", "hyperparameters": HP})
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def _weights(service, job: dict) -> dict:
    return load_file(str(service.store().local_dir(model_key(job["model_id"])) / "model.safetensors"))


def _kinds(client, job_id: str) -> list[str]:
    return [e["kind"] for e in client.get(f"/jobs/{job_id}/events", params={"limit": 1000}).json()["items"]]


@pytest.fixture(scope="module")
def reference(crashy):
    """The job run once, uninterrupted."""
    service, client, dataset_id = crashy
    job = wait_for_job(client, _submit(client, dataset_id))
    assert job["status"] == "succeeded", job["error"]
    return job


def test_sigkill_mid_epoch_resumes_to_bit_identical_weights_and_report(crashy, reference):
    service, client, dataset_id = crashy
    job_id = _submit(client, dataset_id)
    running = wait_for_step(client, job_id, 30)
    assert running["epoch"] == 0  # 100 steps per epoch: the kill lands mid-epoch
    service.processes["worker0"].send_signal(signal.SIGKILL)
    service.processes["worker0"].wait()
    service.start_worker("worker1")

    job = wait_for_job(client, job_id)
    assert job["status"] == "succeeded", job["error"]
    assert job["attempt"] == 2
    kinds = _kinds(client, job_id)
    assert "requeued" in kinds and "resumed" in kinds

    resumed, uninterrupted = _weights(service, job), _weights(service, reference)
    assert resumed.keys() == uninterrupted.keys()
    for name, tensor in uninterrupted.items():
        assert resumed[name].equal(tensor), name
    assert client.get(f"/jobs/{job_id}/report").json() == client.get(f"/jobs/{reference['id']}/report").json()

    for name in ("train_loss", "learning_rate", "val_loss"):
        series = client.get(f"/jobs/{job_id}/metrics", params={"name": name, "limit": 10000}).json()["items"]
        ref = client.get(f"/jobs/{reference['id']}/metrics", params={"name": name, "limit": 10000}).json()["items"]
        assert [m["step"] for m in series] == [m["step"] for m in ref], name  # no gaps, no duplicates
        if name != "samples_per_s":
            assert [m["value"] for m in series] == [m["value"] for m in ref], name


def test_sigterm_checkpoints_and_hands_the_job_back_at_once(crashy, reference):
    service, client, dataset_id = crashy
    worker = next(name for name, proc in service.processes.items() if name.startswith("worker") and proc.poll() is None)
    job_id = _submit(client, dataset_id)
    wait_for_step(client, job_id, 25)
    service.processes[worker].send_signal(signal.SIGTERM)
    assert service.processes[worker].wait(timeout=60) == 0
    handed_back = client.get(f"/jobs/{job_id}").json()
    assert handed_back["status"] == "queued"
    kinds = _kinds(client, job_id)
    assert "handed_back" in kinds and "requeued" not in kinds
    checkpoints = client.get(f"/jobs/{job_id}/checkpoints").json()
    # the state handed back is checkpointed: by a hand-off checkpoint, or by an evaluation at that very step
    assert checkpoints[-1]["step"] == handed_back["step"]
    assert checkpoints[-1]["kind"] == "handoff" or handed_back["step"] % HP["eval_every_steps"] == 0

    # Corrupt the hand-off checkpoint: the resume must refuse it, say so, and fall back to an older state.
    store = service.store()
    weights_key = f"{checkpoints[-1]['storage_key']}/model.safetensors"
    damaged = bytearray(store.get_bytes(weights_key))
    damaged[len(damaged) // 2] ^= 0xFF
    store.put_bytes(weights_key, bytes(damaged))

    service.start_worker("worker2")
    job = wait_for_job(client, job_id)
    assert job["status"] == "succeeded", job["error"]
    assert "checkpoint_unreadable" in _kinds(client, job_id)
    for name, tensor in _weights(service, reference).items():
        assert _weights(service, job)[name].equal(tensor), name


def test_sigkill_with_accumulation_weights_and_partial_freezing_resumes_bit_identically(crashy):
    """Micro-batches, class weights, label smoothing and freeze last_n (issue 14) keep a resume exact."""
    service, client, dataset_id = crashy
    options = {
        **HP, "gradient_accumulation_steps": 2, "class_weights": {"positive": 2.0}, "label_smoothing": 0.1,
        "freeze": "last_n", "trainable_layers": 1,
    }  # fmt: skip
    body = {"dataset_id": dataset_id, "base_model": "tiny-bert", "hyperparameters": options}
    reference = wait_for_job(client, client.post("/jobs", json=body).json()["id"])
    assert reference["status"] == "succeeded", reference["error"]
    worker = next(name for name, proc in service.processes.items() if name.startswith("worker") and proc.poll() is None)
    job_id = client.post("/jobs", json=body).json()["id"]
    assert wait_for_step(client, job_id, 30)["epoch"] == 0
    service.processes[worker].send_signal(signal.SIGKILL)
    service.processes[worker].wait()
    service.start_worker("worker-options")
    job = wait_for_job(client, job_id)
    assert job["status"] == "succeeded" and job["attempt"] == 2, job["error"]
    for name, tensor in _weights(service, reference).items():
        assert _weights(service, job)[name].equal(tensor), name
    series = client.get(f"/jobs/{job_id}/metrics", params={"name": "train_loss", "limit": 10000}).json()["items"]
    ref = client.get(f"/jobs/{reference['id']}/metrics", params={"name": "train_loss", "limit": 10000}).json()["items"]
    assert [(m["step"], m["value"]) for m in series] == [(m["step"], m["value"]) for m in ref]


def test_sigkill_with_image_augmentation_resumes_bit_identically(crashy):
    """Augmented batches are drawn from (seed, epoch, batch): the resumed job sees exactly the batches it would have."""
    service, client, _ = crashy
    upload = {"file": ("colors.zip", image_zip(per_class=150), "application/zip")}
    dataset = client.post("/datasets", files=upload, data={"task": "image_classification"})
    assert dataset.status_code == 201, dataset.text
    # checkpoints every 7 steps of 30-batch epochs: each but the last is mid-epoch, wherever the kill lands
    options = {"epochs": 2, "batch_size": 8, "eval_every_steps": 7, "early_stopping": None, "seed": 13,
               "augmentation": "trivial"}  # fmt: skip
    body = {"dataset_id": dataset.json()["id"], "base_model": "tiny-vit", "hyperparameters": options}
    reference = wait_for_job(client, client.post("/jobs", json=body).json()["id"])
    assert reference["status"] == "succeeded", reference["error"]
    assert reference["total_steps"] == 60  # 30 batches an epoch
    worker = next(name for name, proc in service.processes.items() if name.startswith("worker") and proc.poll() is None)
    job_id = client.post("/jobs", json=body).json()["id"]
    assert wait_for_step(client, job_id, 9)["step"] < 49  # a checkpoint at 7, 14, ... 49: a resume mid-epoch
    service.processes[worker].send_signal(signal.SIGKILL)
    service.processes[worker].wait()
    service.start_worker("worker-augment")
    job = wait_for_job(client, job_id)
    assert job["status"] == "succeeded" and job["attempt"] == 2, job["error"]
    assert "resumed" in _kinds(client, job_id)
    for name, tensor in _weights(service, reference).items():
        assert _weights(service, job)[name].equal(tensor), name
    series = client.get(f"/jobs/{job_id}/metrics", params={"name": "train_loss", "limit": 10000}).json()["items"]
    ref = client.get(f"/jobs/{reference['id']}/metrics", params={"name": "train_loss", "limit": 10000}).json()["items"]
    assert [(m["step"], m["value"]) for m in series] == [(m["step"], m["value"]) for m in ref]


def test_cancel_while_the_worker_is_dead_stays_cancelled(crashy):
    service, client, dataset_id = crashy
    worker = next(name for name, proc in service.processes.items() if name.startswith("worker") and proc.poll() is None)
    job_id = _submit(client, dataset_id)
    wait_for_step(client, job_id, 15)
    service.processes[worker].send_signal(signal.SIGKILL)
    service.processes[worker].wait()
    assert client.post(f"/jobs/{job_id}/cancel").json()["status"] == "running"
    service.start_worker("worker3")
    job = wait_for_job(client, job_id, timeout=60)
    assert job["status"] == "cancelled"
    marker = wait_for_job(client, client.post("/jobs", json={
        "dataset_id": dataset_id, "base_model": "tiny-bert", "hyperparameters": {"max_steps": 1}
    }).json()["id"])  # fmt: skip
    assert marker["status"] == "succeeded"
    again = client.get(f"/jobs/{job_id}").json()
    assert again["status"] == "cancelled" and again["attempt"] == 1


@pytest.mark.parametrize("base", ["tiny-bert", "tiny-timm"])
def test_sigkill_of_a_lora_job_resumes_bit_identically_from_its_small_checkpoints(crashy, base):
    """A LoRA job's checkpoints hold the adapter, the head and the buffers (tiny-timm's BatchNorm statistics); the
    frozen base weights come from the base model on resume. The merged export, the adapter files and every logged
    loss match the uninterrupted job's."""
    service, client, text_dataset = crashy
    if base == "tiny-bert":
        dataset_id, options = text_dataset, {**HP, "seed": 17}
    else:
        upload = {"file": ("colors.zip", image_zip(per_class=150), "application/zip")}
        dataset = client.post("/datasets", files=upload, data={"task": "image_classification"})
        assert dataset.status_code == 201, dataset.text
        dataset_id = dataset.json()["id"]
        options = {"epochs": 2, "batch_size": 8, "eval_every_steps": 7, "early_stopping": None, "seed": 17}
    options["adapter"] = {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.1}
    body = {"dataset_id": dataset_id, "base_model": base, "hyperparameters": options}
    reference = wait_for_job(client, client.post("/jobs", json=body).json()["id"])
    assert reference["status"] == "succeeded", reference["error"]
    worker = next(name for name, proc in service.processes.items() if name.startswith("worker") and proc.poll() is None)
    job_id = client.post("/jobs", json=body).json()["id"]
    assert wait_for_step(client, job_id, 12)["step"] < reference["total_steps"] - 10  # a checkpoint mid-run
    service.processes[worker].send_signal(signal.SIGKILL)
    service.processes[worker].wait()
    service.start_worker(f"worker-lora-{base}")
    job = wait_for_job(client, job_id)
    assert job["status"] == "succeeded" and job["attempt"] == 2, job["error"]
    assert "resumed" in _kinds(client, job_id)
    store = service.store()
    for name in ("model.safetensors", "adapter/adapter_model.safetensors"):
        resumed = load_file(str(store.local_dir(model_key(job["model_id"])) / name))
        uninterrupted = load_file(str(store.local_dir(model_key(reference["model_id"])) / name))
        assert resumed.keys() == uninterrupted.keys()
        for tensor_name, tensor in uninterrupted.items():
            assert resumed[tensor_name].equal(tensor), (name, tensor_name)
    assert client.get(f"/jobs/{job_id}/report").json() == client.get(f"/jobs/{reference['id']}/report").json()
    series = client.get(f"/jobs/{job_id}/metrics", params={"name": "train_loss", "limit": 10000}).json()["items"]
    ref = client.get(f"/jobs/{reference['id']}/metrics", params={"name": "train_loss", "limit": 10000}).json()["items"]
    assert [(m["step"], m["value"]) for m in series] == [(m["step"], m["value"]) for m in ref]
