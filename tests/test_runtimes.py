"""Serving runtimes (issue 15 item 3): an alias moved to onnx or int8 converts its model once, records the converted
model's test accuracy beside the torch model's, and serves the same top labels through the same batcher; a model
family a runtime cannot convert, or a runtime whose packages are missing, is a clear 422 and the alias stays as it
was."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import pytest
import torch

from app import processes
from app.artifacts.layout import model_key, runtime_key
from app.inference.cache import load_served_model
from finetune_client import Client
from tests.conftest import Service, wait_for_job
from tests.factories import image_bytes, image_zip, text_csv

# Different lengths, so a merged batch pads most of them.
TEXTS = [
    "good",
    "the movie was bad",
    "a great fun film and it was really nice",
    "awful",
    "the plot was very dull and boring and the film was really poor",
    "happy",
    "it was a superb movie",
    "sad film",
]
# ONNX Runtime runs the same float32 graph as torch: logits and probabilities differ by rounding only.
ONNX_TOLERANCE = 1e-4
ROUNDS = 10  # concurrent rounds tried until one shows a merged batch (no timing is asserted)


def _train(client: httpx.Client, files: dict, task: str, base_model: str, hp: dict) -> str:
    dataset = client.post("/datasets", files=files, data={"task": task})
    assert dataset.status_code == 201, dataset.text
    job = client.post(
        "/jobs", json={"dataset_id": dataset.json()["id"], "base_model": base_model, "hyperparameters": hp}
    )
    assert job.status_code == 201, job.text
    finished = wait_for_job(client, job.json()["id"])
    assert finished["status"] == "succeeded", finished["error"]
    return finished["model_id"]


@pytest.fixture(scope="module")
def text_model(service: Service, key: str) -> str:
    """A tiny BERT trained until its answers are clear (int8 rounding must not flip a near tie)."""
    hp = {"epochs": 4, "batch_size": 8, "learning_rate": 0.003, "max_length": 16, "seed": 0}
    with service.client(key) as client:
        return _train(client, {"file": ("r.csv", text_csv())}, "text_classification", "tiny-bert", hp)


@pytest.fixture(scope="module")
def image_model(service: Service, key: str) -> str:
    """timm's tiny convolutional test_efficientnet: onnx converts it, int8 (Linear layers only) does not."""
    hp = {"epochs": 1, "batch_size": 8, "max_steps": 2, "image_size": 32}
    with service.client(key) as client:
        return _train(client, {"file": ("i.zip", image_zip(10))}, "image_classification", "tiny-timm", hp)


def put_alias(client: httpx.Client, name: str, model_id: str, runtime: str | None = None) -> httpx.Response:
    body = {"model_id": model_id, "force": True, **({"runtime": runtime} if runtime else {})}
    return client.put(f"/aliases/{name}", json=body)


def scores(client: httpx.Client, model: str, **inputs: object) -> tuple[dict, list[dict[str, float]]]:
    """The answer, and every label's probability for each input."""
    answer = client.post("/predict", json={"model": model, "top_k": 2, **inputs})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    return body, [{p["label"]: p["score"] for p in ranked} for ranked in body["predictions"]]


def top_labels(probabilities: list[dict[str, float]]) -> list[str]:
    return [max(p, key=p.__getitem__) for p in probabilities]


def alias(client: httpx.Client, name: str) -> dict:
    return next(a for a in client.get("/aliases").json() if a["name"] == name)


def test_an_alias_on_onnx_answers_as_torch_does(client, service, text_model):
    assert put_alias(client, "rt-text", text_model).json()["runtime"] == "torch"
    body, on_torch = scores(client, "rt-text", texts=TEXTS)
    assert body["runtime"] == "torch"

    moved = put_alias(client, "rt-text", text_model, "onnx")
    assert moved.status_code == 200, moved.text
    assert moved.json()["runtime"] == "onnx" and alias(client, "rt-text")["runtime"] == "onnx"
    body, on_onnx = scores(client, "rt-text", texts=TEXTS)
    assert (body["model_id"], body["runtime"]) == (text_model, "onnx")
    assert top_labels(on_onnx) == top_labels(on_torch)
    for ours, theirs in zip(on_onnx, on_torch, strict=True):
        assert ours == pytest.approx(theirs, abs=ONNX_TOLERANCE)
    # The model named by its id still runs as trained.
    assert scores(client, text_model, texts=TEXTS[:1])[0]["runtime"] == "torch"

    # The graph is stored next to the model, and its logits are torch's.
    store = service.store()
    assert any(k.endswith("model.onnx") for k in service.stored_keys(runtime_key(text_model, "onnx")))
    folder = store.local_dir(model_key(text_model))
    reference = load_served_model(text_model, folder)
    exported = load_served_model(text_model, folder, "onnx", store.local_dir(runtime_key(text_model, "onnx")), 1)
    assert torch.allclose(exported.forward(TEXTS), reference.forward(TEXTS), atol=ONNX_TOLERANCE)
    # A BERT-family encoder's graph is fused (its two layers' attention each one operator), and answers the same.
    manifest = json.loads((store.local_dir(runtime_key(text_model, "onnx")) / "runtime.json").read_text())
    assert manifest["exporter"].startswith("torchscript") and manifest["fused"]["Attention"] == 2, manifest


def test_the_converted_accuracy_is_recorded_beside_the_original(client, service, key, text_model):
    assert put_alias(client, "rt-text", text_model, "onnx").status_code == 200
    model = client.get(f"/models/{text_model}").json()
    record = model["runtimes"]["onnx"]
    n = record["test_examples"]
    assert n > 0 and record["dataset_id"]
    assert 0 <= record["test_accuracy"] <= 1
    # The torch model scored through the serving path is the model the training evaluated on the same split.
    assert record["torch_test_accuracy"] == pytest.approx(model["metrics"]["test_accuracy"], abs=1 / n + 1e-9)
    assert record["accuracy_change_points"] == pytest.approx(
        (record["test_accuracy"] - record["torch_test_accuracy"]) * 100, abs=0.01
    )
    assert record["agreement_with_torch"] == 1.0  # float rounding never flips a trained model's answer here
    converted_at = record["converted_at"]
    # Converted once: a second alias on the same runtime (here through the Python client) reuses the stored graph.
    with Client(service.url, key) as api:
        assert api.aliases.set("rt-text-2", text_model, force=True, runtime="onnx").runtime == "onnx"
        assert api.models.get(text_model).runtimes["onnx"]["converted_at"] == converted_at
        assert api.predict(TEXTS[:1], model="rt-text-2").runtime == "onnx"


def test_an_alias_on_int8_answers_the_same_labels(client, service, text_model):
    assert put_alias(client, "rt-text", text_model).status_code == 200
    _, on_torch = scores(client, "rt-text", texts=TEXTS)
    moved = put_alias(client, "rt-text", text_model, "int8")
    assert moved.status_code == 200, moved.text
    body, on_int8 = scores(client, "rt-text", texts=TEXTS)
    assert (body["model_id"], body["runtime"]) == (text_model, "int8")
    assert top_labels(on_int8) == top_labels(on_torch)
    assert on_int8 != on_torch  # the quantized weights did run: their scores move a little
    record = client.get(f"/models/{text_model}").json()["runtimes"]["int8"]
    assert record["engine"] == "onnxruntime"  # the optional extra is installed: its int8 is the faster one
    assert record["test_examples"] > 0 and 0 <= record["test_accuracy"] <= 1
    assert record["torch_test_accuracy"] is not None
    manifest = json.loads((service.store().local_dir(runtime_key(text_model, "int8")) / "runtime.json").read_text())
    assert manifest["fused"]["Attention"] == 2 and manifest["modules"].endswith("2 fused Attention"), manifest


async def _concurrently(url: str, key: str, bodies: list[dict]) -> list[httpx.Response]:
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=len(bodies))
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60, limits=limits) as client:
        return await asyncio.gather(*(client.post("/predict", json=b) for b in bodies))


@pytest.mark.parametrize("runtime", ["onnx", "int8"])
def test_concurrent_requests_share_a_forward_pass_in_every_runtime(client, service, key, text_model, runtime):
    name = "rt-text"
    assert put_alias(client, name, text_model, runtime).status_code == 200
    alone = {text: scores(client, name, texts=[text])[1][0] for text in TEXTS}
    bodies = [{"model": name, "texts": [TEXTS[i % len(TEXTS)]], "top_k": 2} for i in range(16)]
    merged = 0
    for _ in range(ROUNDS):
        answers = asyncio.run(_concurrently(service.url, key, bodies))
        for body, answer in zip(bodies, answers, strict=True):
            assert answer.status_code == 200, answer.text
            assert answer.json()["runtime"] == runtime
            got = {p["label"]: p["score"] for p in answer.json()["predictions"][0]}
            assert got == pytest.approx(alone[body["texts"][0]], abs=ONNX_TOLERANCE if runtime == "onnx" else 0.02)
        merged = max(int(a.headers["x-batch-requests"]) for a in answers)
        if merged > 1:
            break
    assert merged > 1, f"16 concurrent requests on {runtime} never shared a forward pass"


def test_an_image_model_on_onnx_and_int8(client, image_model):
    images = [
        base64.b64encode(image_bytes(color, seed)).decode() for color, seed in (((200, 30, 30), 7), ((30, 30, 200), 8))
    ]
    assert put_alias(client, "rt-image", image_model).status_code == 200
    _, on_torch = scores(client, "rt-image", images=images)

    refused = put_alias(client, "rt-image", image_model, "int8")
    assert refused.status_code == 422, refused.text
    problem = refused.json()
    assert "Linear" in problem["detail"] and "'torch' or 'onnx'" in problem["detail"]
    assert problem["supported_runtimes"] == ["torch", "onnx"] and problem["field"] == "runtime"
    assert alias(client, "rt-image")["runtime"] == "torch"  # the failed move left the alias as it was
    body, still = scores(client, "rt-image", images=images)
    assert body["runtime"] == "torch" and still == on_torch
    assert "int8" not in client.get(f"/models/{image_model}").json()["runtimes"]

    assert put_alias(client, "rt-image", image_model, "onnx").status_code == 200
    body, on_onnx = scores(client, "rt-image", images=images)
    assert body["runtime"] == "onnx" and top_labels(on_onnx) == top_labels(on_torch)
    for ours, theirs in zip(on_onnx, on_torch, strict=True):
        assert ours == pytest.approx(theirs, abs=ONNX_TOLERANCE)
    assert client.get(f"/models/{image_model}").json()["runtimes"]["onnx"]["test_examples"] > 0


def test_without_the_onnx_packages_the_service_starts_and_says_what_to_install(service, key, text_model, tmp_path):
    """A second API process that cannot import onnxruntime (a module of that name that fails to import stands in
    for the package not being installed): it serves torch, and every use of onnx is a 422 naming the extra."""
    (tmp_path / "onnxruntime.py").write_text(
        'raise ModuleNotFoundError("No module named \'onnxruntime\'", name="onnxruntime")\n'
    )
    pythonpath = ":".join(filter(None, [str(tmp_path), service.env.get("PYTHONPATH", "")]))
    port = processes.free_port()
    api = service.start("api-no-onnx", processes.api_command("127.0.0.1", port), {"PYTHONPATH": pythonpath})
    headers = {"Authorization": f"Bearer {key}"}
    try:
        processes.wait_ready(f"http://127.0.0.1:{port}", api, timeout=180)
        with service.client(key) as first, httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers) as bare:
            assert put_alias(first, "rt-text-2", text_model, "onnx").status_code == 200
            assert put_alias(bare, "rt-text", text_model).status_code == 200
            assert scores(bare, "rt-text", texts=TEXTS[:1])[0]["runtime"] == "torch"

            refused = put_alias(bare, "rt-text", text_model, "onnx")
            assert refused.status_code == 422, refused.text
            assert "pip install 'finetune-service[onnx]'" in refused.json()["detail"]
            assert alias(bare, "rt-text")["runtime"] == "torch"
            # An alias another process moved to onnx: this one says the same instead of failing obscurely.
            answer = bare.post("/predict", json={"model": "rt-text-2", "texts": TEXTS[:1]}, timeout=60)
            assert answer.status_code == 422, answer.text
            assert "pip install 'finetune-service[onnx]'" in answer.json()["detail"]
    finally:
        processes.stop([service.processes.pop("api-no-onnx")])


def test_int8_without_onnx_runtime_files_quantizes_with_torch(service, text_model, tmp_path):
    """A process converting without ONNX Runtime keeps no int8 graph: int8 then quantizes the Linear layers with
    torch.ao at load, and answers the torch model's labels."""
    folder = service.store().local_dir(model_key(text_model))
    reference = load_served_model(text_model, folder)
    quantized = load_served_model(text_model, folder, "int8", tmp_path)  # an empty runtime folder
    assert quantized.model is not None
    kinds = {type(m).__module__ for m in quantized.model.modules()}
    assert any(kind.startswith("torch.ao.nn.quantized") for kind in kinds)
    inputs = reference.encode(TEXTS)
    assert quantized.forward(inputs).argmax(1).tolist() == reference.forward(inputs).argmax(1).tolist()


def test_a_fused_export_that_fails_falls_back_to_the_unfused_graph(models_dir, tmp_path, monkeypatch):
    """A torch whose TorchScript exporter is gone (it is deprecated) still exports: dynamo's unfused graph, which
    answers as torch does."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from app.inference.runtimes import export_onnx, onnx_forward
    from app.tasktypes.common import Preprocessing
    from app.tasktypes.text import collate

    folder = models_dir / "tiny-bert"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    prep = Preprocessing(task="text_classification", labels=["LABEL_0", "LABEL_1"], max_length=32)
    batch = collate(tokenizer, tokenizer(TEXTS)["input_ids"])
    export = torch.onnx.export

    def without_torchscript(*args, **kwargs):
        if kwargs.get("dynamo") is False:
            raise RuntimeError("the TorchScript exporter was removed")
        return export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", without_torchscript)
    attention = model.config._attn_implementation
    assert export_onnx(model, prep, batch, tmp_path / "model.onnx") == {"exporter": "dynamo"}
    assert model.config._attn_implementation == attention  # the model's own attention is given back
    with torch.no_grad():
        expected = model(**batch).logits
    assert torch.allclose(onnx_forward(tmp_path / "model.onnx", 1)(batch), expected, atol=ONNX_TOLERANCE)
