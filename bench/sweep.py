"""A sweep with pruning against the same trials without pruning, side by side, on the real service and real data.

    python bench/sweep.py [--train 300] [--val 200] [--test 500] [--trials 8] [--epochs 10] [--batch 16]
                          [--pruner asha] [--pruner-warmup-epochs 2] [--seed 0] [--out var/bench/sweep.jsonl]

MiniLM-L6 on Rotten Tomatoes fresh/rotten (bench/_common.py builds both under var/bench, offline), 64 tokens. The
service runs as users run it (`finetune up`: the API and one worker, SQLite); through its API the bench
  1. trains one job on the service's defaults (the reference a sweep must beat),
  2. runs a sweep with `--pruner` (asha by default, median as the alternative), then
  3. the same sweep with pruner "none".
Both sweeps use the random sampler with the same seed, which proposes the same hyperparameters in the same order
whatever the earlier trials scored: the same trials, with and without pruning. Trials run one at a time (parallelism
1) so wall times compare, at the text default's batch (16), evaluated twice an epoch (the pruner's rungs). The space:
learning rate log-uniform over 3e-6..1e-3 (its low end barely moves MiniLM in a few epochs, its high end can
diverge: trials worth pruning) and warm-up ratio 0..0.2.

Printed (and appended to --out as JSON lines): per sweep, trials by state, optimizer steps of all trials, wall time,
the best trial's validation objective and its model's test accuracy (from its job's report); the defaults job's.

Targets (issue 13): the pruned sweep takes at most 40% of the unpruned sweep's optimizer steps; its best trial's test
accuracy is within 0.5 points of the unpruned sweep's best and at least the defaults job's.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

MAX_LENGTH = 64


def dataset_csv(train: int, val: int, test: int, seed: int) -> bytes:
    """Rotten Tomatoes fresh/rotten with given split sizes (demo/build_datasets.py's stratified, seeded split)."""
    from demo.build_datasets import load_rotten_tomatoes, split_rotten_tomatoes

    rows = split_rotten_tomatoes(load_rotten_tomatoes(), {"train": train, "val": val, "test": test}, seed)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["text", "label", "split"])
    writer.writerows(rows)
    return out.getvalue().encode()


def sweep_spec(dataset_id: str, args: argparse.Namespace, pruner: str) -> dict:
    steps_per_epoch = -(-args.train // args.batch)
    # No rung before `--pruner-warmup-epochs`: in its first epochs every trial still predicts the majority class, and
    # a rung there prunes by noise (measured: a rung at step 9 of 190 pruned 7 of 8 trials, good learning rates too).
    warmup = max(1, round(args.pruner_warmup_epochs * steps_per_epoch))
    pruning = {"type": pruner}
    if pruner == "median":
        pruning.update(warmup_steps=warmup, startup_trials=2)
    elif pruner in ("asha", "hyperband"):
        pruning.update(warmup_steps=warmup, reduction_factor=3)
    return {
        "dataset_id": dataset_id,
        "base_model": C.MINILM,
        "hyperparameters": {
            "max_length": MAX_LENGTH, "epochs": args.epochs, "batch_size": args.batch,
            "eval_every_steps": max(1, steps_per_epoch // 2), "early_stopping": None,
        },
        "search_space": {
            "learning_rate": {"type": "log_uniform", "low": 3e-6, "high": 1e-3},
            "warmup_ratio": {"type": "uniform", "low": 0.0, "high": 0.2},
        },
        "objective": {"metric": "val_accuracy"},
        "sampler": "random", "max_trials": args.trials, "parallelism": 1, "pruner": pruning, "seed": args.seed,
    }  # fmt: skip


def run_sweep(client, spec: dict, timeout: float) -> dict:
    started = time.perf_counter()
    answer = client.post("/sweeps", json=spec)
    answer.raise_for_status()
    sweep_id = answer.json()["id"]
    deadline = time.monotonic() + timeout
    while True:
        sweep = client.get(f"/sweeps/{sweep_id}").json()
        if sweep["status"] != "running":
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"sweep {sweep_id} still running after {timeout:.0f} s")
        time.sleep(2)
    wall = time.perf_counter() - started
    trials = client.get(f"/sweeps/{sweep_id}/trials").json()
    best = sweep["best_trial"]
    report = client.get(f"/jobs/{best['job_id']}/report").json() if best else {}
    return {
        "pruner": spec["pruner"]["type"],
        "status": sweep["status"],
        "trials": sweep["counts"],
        "steps": sweep["budget_used"]["steps"],
        "wall_s": round(wall, 1),
        "best_trial": best["number"] if best else None,
        "best_hyperparameters": best["hyperparameters"] if best else None,
        "best_val_accuracy": best["objective"] if best else None,
        "best_test_accuracy": report.get("accuracy"),
        "per_trial": [
            {
                "n": t["number"],
                "status": t["status"],
                "steps": t["steps"],
                "objective": t["objective"],
                **{k: round(v, 6) for k, v in t["hyperparameters"].items()},
            }
            for t in trials
        ],  # fmt: skip
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=300)
    parser.add_argument("--val", type=int, default=200)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16, help="every trial's batch (the text default)")
    parser.add_argument("--pruner", choices=["asha", "hyperband", "median"], default="asha")
    parser.add_argument("--pruner-warmup-epochs", type=float, default=2.0, help="no pruning before this many epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=6 * 3600)
    parser.add_argument("--out", type=Path, default=C.BENCH_DIR / "sweep.jsonl")
    args = parser.parse_args()

    import httpx

    from finetune_client import Client

    models = C.ensure_models()
    C.ensure_data()  # the corpus files demo/build_datasets.py reads
    tmp = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    env = C.service_env(tmp / "var", models)
    (tmp / "var").mkdir(parents=True)
    with C.running_service(tmp, env) as service:
        url, key = service.url, service.key
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as client:
            upload = {"file": ("rt.csv", dataset_csv(args.train, args.val, args.test, args.seed))}
            dataset = client.post("/datasets", files=upload, data={"task": "text_classification"})
            dataset.raise_for_status()
            dataset_id = dataset.json()["id"]

            C.log("the defaults job")
            started = time.perf_counter()
            body = {"dataset_id": dataset_id, "base_model": C.MINILM, "hyperparameters": {"max_length": MAX_LENGTH}}
            with Client(url=url, api_key=key) as api:
                job = C.wait_for_job(api, client.post("/jobs", json=body).json()["id"], args.timeout)
            defaults = {
                "method": "defaults_job", "steps": job.step, "wall_s": round(time.perf_counter() - started, 1),
                "test_accuracy": client.get(f"/jobs/{job.id}/report").json()["accuracy"],
            }  # fmt: skip
            C.emit(bench="sweep", **defaults)

            rows = []
            for pruner in (args.pruner, "none"):
                C.log(f"the sweep with pruner {pruner}")
                row = run_sweep(client, sweep_spec(dataset_id, args, pruner), args.timeout)
                C.emit(bench="sweep", method=f"sweep_{pruner}", **row)
                rows.append(row)

    pruned, unpruned = rows
    verdict = {
        "steps_ratio": round(pruned["steps"] / max(unpruned["steps"], 1), 3),
        "steps_target_met": pruned["steps"] <= 0.4 * unpruned["steps"],
        "best_test_gap_points": round(100 * (unpruned["best_test_accuracy"] - pruned["best_test_accuracy"]), 2),
        "within_half_a_point": 100 * (unpruned["best_test_accuracy"] - pruned["best_test_accuracy"]) <= 0.5,
        "beats_defaults": pruned["best_test_accuracy"] >= defaults["test_accuracy"],
        "same_proposals": [{k: v for k, v in t.items() if k not in ("status", "steps", "objective")}
                           for t in pruned["per_trial"]]
        == [{k: v for k, v in t.items() if k not in ("status", "steps", "objective")} for t in unpruned["per_trial"]],
    }  # fmt: skip
    C.emit(bench="sweep", method="verdict", **verdict)
    columns = ["pruner", "status", "steps", "wall_s", "best_trial", "best_val_accuracy", "best_test_accuracy"]
    print(C.table(rows, columns, title=f"defaults job: test accuracy {defaults['test_accuracy']}"), file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        for row in [defaults, *rows, verdict]:
            f.write(json.dumps({"args": vars(args) | {"out": str(args.out)}, **row}, default=str) + "\n")


if __name__ == "__main__":
    main()
