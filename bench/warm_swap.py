"""The first requests after an alias moves, against steady ones: in the API process that moved it (PUT /aliases
loads and warms the new model before it answers) and in a second API process on the same database (it keeps the old
model serving while it loads and warms the new one in the background).

    python bench/warm_swap.py [--rounds 8] [--steady 20] [--after 3] [--out var/bench/warm_swap.jsonl]

The service as users run it (`finetune up`: the API and one worker, SQLite) plus `finetune api` on another port,
with three MiniLM-L6 models (64 tokens, each trained 2 steps on a few Rotten Tomatoes reviews: their accuracy does
not matter here) and a model cache of 2 per process, so that each move, rotating over the three, lands on a model
neither process holds. Each round: `--steady` requests to the alias on each process, the move (through the first),
then the first `--after` answers of the new model on each process. The same requests by model id to a model that is
not loaded give the cold figure a swap without warming would cost.

Printed (and appended to --out as JSON lines): per process, the median steady latency, the median of the first
answers after a move and their ratio, the cold request's latency, and the model loads a request waited for during the
rounds (from each process's /metrics; target 0). Target (issue 15): first answers within 2x steady.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

MAX_LENGTH = 64
TEXT = "a warm, funny and sad little picture that stays with you"


def small_csv(rows: int = 60) -> bytes:
    """A few Rotten Tomatoes reviews (training two steps on them makes a servable model)."""
    from demo.build_datasets import load_rotten_tomatoes, split_rotten_tomatoes

    split = split_rotten_tomatoes(load_rotten_tomatoes(), {"train": rows, "val": 20, "test": 20}, 0)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["text", "label", "split"])
    writer.writerows(split)
    return out.getvalue().encode()


def timed(client, model: str) -> tuple[str, float]:
    """Which model answered a one-text request, and its latency in seconds."""
    started = time.perf_counter()
    answer = client.post("/predict", json={"model": model, "texts": [TEXT]})
    seconds = time.perf_counter() - started
    answer.raise_for_status()
    return answer.json()["model_id"], seconds


def request_loads(client) -> float:
    """The process's finetune_predict_model_loads_total{when="request"}."""
    from prometheus_client.parser import text_string_to_metric_families

    families = text_string_to_metric_families(client.get("/metrics").text)
    return sum(
        s.value
        for f in families
        if f.name == "finetune_predict_model_loads"
        for s in f.samples
        if s.name.endswith("_total") and s.labels.get("when") == "request"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steady", type=int, default=20, help="steady requests per process per round")
    parser.add_argument("--after", type=int, default=3, help="first answers of the new model measured per process")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--out", type=Path, default=C.BENCH_DIR / "warm_swap.jsonl")
    args = parser.parse_args()

    import httpx

    from finetune_client import Client

    models_dir = C.ensure_models()
    C.ensure_data()
    tmp = Path(tempfile.mkdtemp(prefix="bench-warm-swap-"))
    env = {**C.service_env(tmp / "var", models_dir), "FINETUNE_MODEL_CACHE_SIZE": "2"}
    (tmp / "var").mkdir(parents=True)
    with C.running_service(tmp, env) as first:
        headers = {"Authorization": f"Bearer {first.key}"}
        with httpx.Client(base_url=first.url, headers=headers, timeout=120) as one:
            upload = {"file": ("rt.csv", small_csv())}
            dataset = one.post("/datasets", files=upload, data={"task": "text_classification"})
            dataset.raise_for_status()
            hp = {"max_steps": 2, "batch_size": 8, "max_length": MAX_LENGTH, "epochs": 1}
            ids = []
            with Client(url=first.url, api_key=first.key) as api:
                for seed in range(4):  # three rotate through the alias; the fourth is the cold reference's
                    body = {"dataset_id": dataset.json()["id"], "base_model": C.MINILM,
                            "hyperparameters": {**hp, "seed": seed}}  # fmt: skip
                    ids.append(C.wait_for_job(api, one.post("/jobs", json=body).json()["id"], args.timeout).model_id)
            rotating, spare = ids[:3], ids[3]
            second_tmp = tmp / "second"
            second_tmp.mkdir()
            with (
                C.running_service(second_tmp, env, command="api") as second_service,
                httpx.Client(base_url=second_service.url, headers=headers, timeout=120) as two,
            ):
                rows = measure(args, one, two, rotating, spare)
    for row in rows:
        C.emit(bench="warm_swap", **row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    cols = ["process", "steady_p50_ms", "first_after_p50_ms", "ratio", "cold_ms", "loads_requests_waited_for"]
    print(C.table(rows, cols, "first answers after a move against steady ones (target ratio <= 2)"))


def measure(args, one, two, rotating: list[str], spare: str) -> list[dict]:
    processes = {"moved through it": one, "another API process": two}
    alias = "bench-warm-swap"
    put = one.put(f"/aliases/{alias}", json={"model_id": rotating[0], "force": True})
    put.raise_for_status()
    for client in processes.values():
        timed(client, alias)
        time.sleep(1.5)  # past the lookup ttl
    steady: dict[str, list[float]] = {name: [] for name in processes}
    after: dict[str, list[float]] = {name: [] for name in processes}
    loads_before = {name: request_loads(client) for name, client in processes.items()}
    for round_ in range(args.rounds):
        for name, client in processes.items():
            steady[name] += [timed(client, alias)[1] for _ in range(args.steady)]
        target = rotating[(round_ + 1) % len(rotating)]
        one.put(f"/aliases/{alias}", json={"model_id": target, "force": True}).raise_for_status()
        first = [timed(one, alias) for _ in range(args.after)]
        assert all(m == target for m, _ in first), first
        after["moved through it"] += [s for _, s in first]
        deadline = time.monotonic() + 120
        while True:  # the second process answers with the old model until the new one is warm
            model, seconds = timed(two, alias)
            if model == target:
                break
            assert time.monotonic() < deadline, "the second process never moved"
            time.sleep(0.02)
        after["another API process"] += [seconds] + [timed(two, alias)[1] for _ in range(args.after - 1)]
        C.log(f"round {round_ + 1}/{args.rounds}: moved to {target[:8]}")
    loads = {name: int(request_loads(client) - loads_before[name]) for name, client in processes.items()}
    rows = []
    for name, client in processes.items():
        cold = timed(client, spare)[1]  # a model this process never loaded, requested by id
        client.post("/predict", json={"model": rotating[0], "texts": [TEXT]})  # evict the spare again
        steady_p50, after_p50 = statistics.median(steady[name]), statistics.median(after[name])
        rows.append({
            "process": name, "rounds": args.rounds, "steady_p50_ms": round(1000 * steady_p50, 2),
            "first_after_p50_ms": round(1000 * after_p50, 2), "first_after_max_ms": round(1000 * max(after[name]), 2),
            "ratio": round(after_p50 / steady_p50, 2), "cold_ms": round(1000 * cold, 1),
            "loads_requests_waited_for": loads[name],
        })  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
