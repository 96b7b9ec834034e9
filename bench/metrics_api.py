"""Latency of GET /jobs/{id}/metrics for a job with 100,000 metric rows, against the running service on SQLite.

    python bench/metrics_api.py [--rows 100000] [--requests 200] [--port 0] [--keep]

What it does, all on loopback, in a temporary FINETUNE_VAR_DIR (the embedded default: SQLite + local artifacts):
  1. builds a tiny BERT (tests/factories.py build_tiny_text_model) into a temporary FINETUNE_MODELS_DIR;
  2. starts the service: `python -m app.cli up --port P` (API + one worker), waits for /readyz;
  3. creates a key: `python -m app.cli keys create --team bench`;
  4. uploads a tiny CSV and submits a job (1 epoch), waits until it succeeds;
  5. bulk-inserts --rows metric rows for that job straight into the database with SQLAlchemy (app.jobs.tables.Metric;
     train_loss / learning_rate / samples_per_s per step, as the worker writes them);
  6. times --requests sequential requests (keep-alive client, after 10 warm-up requests) for each of:
       default        GET /jobs/{id}/metrics                         (first page, limit 1000)
       name           GET /jobs/{id}/metrics?name=train_loss         (first page, limit 1000)
       name_sparse    GET /jobs/{id}/metrics?name=val_accuracy       (a rare metric: one row per 500 steps)
       name_tail      GET /jobs/{id}/metrics?name=train_loss&after_step=<last step - 100>   (a dashboard's poll)
       name_last_page GET /jobs/{id}/metrics?name=train_loss&cursor=<id near the end>
     and reports p50 / p99 / mean milliseconds;
  7. for diagnosis: the time of list_metrics' query alone (SQLAlchemy, in this process) and SQLite's query plan.
Target: p50 <= 50 ms for the default page and for name=train_loss.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

TARGET_P50_MS = 50.0
STEP_METRICS = ("train_loss", "learning_rate", "samples_per_s")
EVAL_METRICS = ("val_loss", "val_accuracy", "val_macro_f1")
EVAL_EVERY = 500  # steps: an evaluation's 3 rows every 500 steps, like a long job evaluating every few epochs


def run_job(client: C.Client) -> C.Job:
    from tests.factories import text_csv

    dataset = client.datasets.upload(text_csv(), "text_classification", filename="reviews.csv", name="bench")
    hp = {"epochs": 1, "batch_size": 16, "learning_rate": 0.003, "max_length": 16}
    job = client.jobs.create(dataset.id, "tiny-bert", hp)
    return C.wait_for_job(client, job.id, timeout=300)


def insert_metrics(database_url: str, job_id: str, rows: int) -> dict:
    """Bulk-insert `rows` Metric rows for `job_id` after the job's own steps: 3 per step, 3 more per evaluation."""
    from sqlalchemy import func, insert, select

    from app.db import Database, utcnow
    from app.jobs.tables import Metric

    db = Database(database_url)
    started = time.perf_counter()
    with db.session() as session:
        first_step = (session.scalar(select(func.max(Metric.step)).where(Metric.job_id == job_id)) or 0) + 1
    now = utcnow()
    batch, written, step = [], 0, first_step
    while written < rows:
        for name in STEP_METRICS + (EVAL_METRICS if step % EVAL_EVERY == 0 else ()):
            if written == rows:
                break
            value = {"train_loss": 2.0 / (1 + step * 1e-3), "learning_rate": 5e-5, "samples_per_s": 35.0}.get(name, 0.9)
            batch.append(
                {"job_id": job_id, "name": name, "step": step, "epoch": step / 1000, "value": value, "at": now}
            )
            written += 1
        step += 1
        if len(batch) >= 10_000 or written == rows:
            with db.session() as session:
                session.execute(insert(Metric), batch)
            batch = []
    with db.session() as session:
        total = session.scalar(select(func.count()).select_from(Metric).where(Metric.job_id == job_id))
        ids = list(session.scalars(select(Metric.id).where(Metric.job_id == job_id, Metric.name == "train_loss")
                                   .order_by(Metric.id.desc()).limit(500)))  # fmt: skip
    db.dispose()
    return {"rows_for_job": total, "last_step": step - 1, "insert_s": time.perf_counter() - started,
            "cursor_near_end": ids[-1] if ids else None}  # fmt: skip


def time_requests(client, path: str, params: dict, n: int) -> dict:
    for _ in range(10):
        client.get(path, params=params).raise_for_status()
    times, size, items = [], 0, 0
    for _ in range(n):
        t0 = time.perf_counter()
        r = client.get(path, params=params)
        times.append((time.perf_counter() - t0) * 1000)
        r.raise_for_status()
        size = len(r.content)
        items = len(r.json()["items"])
    times.sort()
    return {
        "p50_ms": round(statistics.median(times), 2),
        "p99_ms": round(times[min(len(times) - 1, int(round(0.99 * (len(times) - 1))))], 2),
        "mean_ms": round(statistics.fmean(times), 2),
        "min_ms": round(times[0], 2),
        "items": items,
        "response_bytes": size,
    }


def diagnose(database_url: str, job_id: str, cases: dict[str, dict]) -> list[dict]:
    """The list_metrics query alone (no HTTP, no serialisation), and SQLite's plan for it."""
    from sqlalchemy import select, text

    from app.db import Database
    from app.jobs.tables import Metric

    db = Database(database_url)
    out = []
    with db.session() as session:
        for label, params in cases.items():
            query = select(Metric).where(Metric.job_id == job_id)
            if params.get("name"):
                query = query.where(Metric.name == params["name"])
            if params.get("after_step") is not None:
                query = query.where(Metric.step > params["after_step"])
            if params.get("cursor") is not None:
                query = query.where(Metric.id > params["cursor"])
            query = query.order_by(Metric.id).limit(params.get("limit", 1000) + 1)
            times = []
            for _ in range(30):
                t0 = time.perf_counter()
                list(session.scalars(query))
                session.expunge_all()
                times.append((time.perf_counter() - t0) * 1000)
            compiled = query.compile(session.bind, compile_kwargs={"literal_binds": True})
            plan = [row[-1] for row in session.execute(text(f"EXPLAIN QUERY PLAN {compiled}"))]
            out.append({"case": label, "query_orm_p50_ms": round(statistics.median(times), 2), "sqlite_plan": plan})
    db.dispose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    parser.add_argument("--keep", action="store_true", help="keep the temporary var dir (its path is printed)")
    args = parser.parse_args()

    from tests.factories import build_tiny_text_model

    tmp = Path(tempfile.mkdtemp(prefix="bench-metrics-"))
    var_dir, models_dir = tmp / "var", tmp / "models"
    build_tiny_text_model(models_dir / "tiny-bert")
    env = C.service_env(var_dir, models_dir)
    var_dir.mkdir(parents=True)
    rows_out = []
    try:
        rows_out = measure(args, tmp, var_dir, env)
    finally:
        if args.keep:
            C.log(f"kept {tmp}")
        else:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    print()
    cols = ["case", "items", "p50_ms", "p99_ms", "mean_ms", "query_p50_ms", "meets_target", "plan"]
    print(
        C.table(rows_out, cols, title=f"GET /jobs/{{id}}/metrics, {args.rows} rows, SQLite, {args.requests} requests")
    )


def measure(args: argparse.Namespace, tmp: Path, var_dir: Path, env: dict[str, str]) -> list[dict]:
    """Run the service, a tiny job, insert the rows, time the requests; the rows of the table."""
    import httpx

    rows_out: list[dict] = []
    with C.running_service(tmp, env, port=args.port) as service:
        url, key = service.url, service.key
        with C.Client(url, key) as sdk:
            C.log("running a tiny job")
            job_id = run_job(sdk).id
        # The timings below measure the API itself: plain requests, no client-side parsing or retries.
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
            database_url = f"sqlite:///{var_dir / 'finetune.db'}"
            C.log(f"inserting {args.rows} metric rows for job {job_id}")
            inserted = insert_metrics(database_url, job_id, args.rows)
            C.log(f"{inserted}")
            path = f"/jobs/{job_id}/metrics"
            cases = {
                "default": {},
                "name": {"name": "train_loss"},
                "name_sparse": {"name": "val_accuracy"},
                "name_tail": {"name": "train_loss", "after_step": inserted["last_step"] - 100},
                "name_last_page": {"name": "train_loss", "cursor": inserted["cursor_near_end"]},
            }
            for label, params in cases.items():
                C.log(f"timing {args.requests} requests: {label} {params}")
                fig = time_requests(client, path, params, args.requests)
                row = {
                    "bench": "metrics_api",
                    "case": label,
                    "request": "GET /jobs/{id}/metrics" + (f"?{httpx.QueryParams(params)}" if params else ""),
                    "metric_rows_for_job": inserted["rows_for_job"],
                    "requests": args.requests,
                    **fig,
                }
                if label in ("default", "name"):
                    row["target_p50_ms"] = TARGET_P50_MS
                    row["meets_target"] = fig["p50_ms"] <= TARGET_P50_MS
                C.emit(**row)
                rows_out.append(row)
            for fig in diagnose(database_url, job_id, cases):
                C.emit(bench="metrics_api_query", **fig)
                for r in rows_out:
                    if r["case"] == fig["case"]:
                        r["query_p50_ms"] = fig["query_orm_p50_ms"]
                        r["plan"] = " | ".join(fig["sqlite_plan"])
    return rows_out


if __name__ == "__main__":
    main()
