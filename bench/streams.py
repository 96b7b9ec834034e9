"""How many idle live streams (GET /jobs/{id}/stream) one API process of the embedded default holds, and what they cost.

    python bench/streams.py [--levels 250,500,1000,2000] [--healthz 100] [--port 0] [--keep]

What it does, all on loopback, in a temporary FINETUNE_VAR_DIR (the embedded default: SQLite + local artifacts):
  1. builds a tiny BERT into a temporary models dir, runs `finetune migrate`, then starts the API alone
     (`python -m app.cli api`; no worker, so the job below stays queued and its streams stay idle), with
     FINETUNE_STREAM_MAX_CONNECTIONS / _MAX_PER_TEAM raised to the highest level (the shipped defaults are 1000 / 100);
  2. creates a key, uploads a tiny CSV, submits a job;
  3. opens streams on that job in steps up to each level (raw asyncio sockets in this process, each reading its
     stream to the end), and at each level reports: the API process's RSS and open file descriptors, the time it
     took to open the step's streams, and p50/p99 of GET /healthz and GET /jobs/{id} from another client;
  4. at the highest level, inserts one metric row for the job straight into SQLite (as a worker would) and times
     how long until every stream has it (the hub's poll interval, 0.5 s, plus the fan-out), then checks that one
     stream more than FINETUNE_STREAM_MAX_CONNECTIONS is refused with 503 and Retry-After.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


class Stream:
    """One SSE client on a raw socket: reads until closed, notes when the first metric arrived."""

    def __init__(self) -> None:
        self.status = 0
        self.first_metric_at: float | None = None
        self.heartbeats = 0
        self.writer: asyncio.StreamWriter | None = None

    async def open(self, port: int, key: str, job_id: str) -> None:
        reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        request = (
            f"GET /jobs/{job_id}/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
            "Accept: text/event-stream\r\n\r\n"
        )
        self.writer.write(request.encode())
        await self.writer.drain()
        self.status = int((await reader.readline()).split()[1])
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        self.task = asyncio.create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while chunk := await reader.read(65536):
            if self.first_metric_at is None and b"event: metric" in chunk:
                self.first_metric_at = time.monotonic()
            self.heartbeats += chunk.count(b": heartbeat")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def latency(url: str, path: str, key: str, n: int) -> dict:
    import httpx

    times = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        for _ in range(5):
            client.get(path).raise_for_status()
        for _ in range(n):
            t0 = time.perf_counter()
            client.get(path).raise_for_status()
            times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {"p50_ms": round(statistics.median(times), 2), "p99_ms": round(times[int(0.99 * (len(times) - 1))], 2)}


def in_thread(fn, *args):
    """Run `fn` in a thread while this event loop keeps serving the streams; its result."""
    out: dict = {}
    thread = threading.Thread(target=lambda: out.setdefault("r", fn(*args)))
    thread.start()
    return thread, out


async def wait_thread(thread: threading.Thread, out: dict):
    while thread.is_alive():
        await asyncio.sleep(0.05)
    return out["r"]


def insert_metric(database_url: str, job_id: str) -> float:
    from sqlalchemy import insert

    from app.db import Database
    from app.jobs.tables import Metric

    db = Database(database_url)
    with db.session() as session:
        session.execute(insert(Metric), [{"job_id": job_id, "name": "train_loss", "step": 1, "epoch": 0.0, "value": 1}])
    written = time.monotonic()
    db.dispose()
    return written


async def measure(url: str, port: int, key: str, job_id: str, levels: list[int], n_http: int, db_url: str, pid: int):
    import psutil

    api = psutil.Process(pid)
    streams: list[Stream] = []
    rows = []
    for level in levels:
        started = time.perf_counter()
        batch = [Stream() for _ in range(level - len(streams))]
        for i in range(0, len(batch), 50):  # 50 connections at a time, like clients arriving in a burst
            await asyncio.gather(*(s.open(port, key, job_id) for s in batch[i : i + 50]))
        streams += batch
        opened_s = time.perf_counter() - started
        await asyncio.sleep(2)  # settle
        refused = sum(s.status != 200 for s in streams)
        healthz = await wait_thread(*in_thread(latency, url, "/healthz", key, n_http))
        job = await wait_thread(*in_thread(latency, url, f"/jobs/{job_id}", key, n_http))
        row = {
            "bench": "streams",
            "streams": len(streams),
            "refused": refused,
            "api_rss_mb": round(api.memory_info().rss / 2**20, 1),
            "api_fds": api.num_fds(),
            "open_step_s": round(opened_s, 2),
            "healthz_p50_ms": healthz["p50_ms"],
            "healthz_p99_ms": healthz["p99_ms"],
            "get_job_p50_ms": job["p50_ms"],
            "get_job_p99_ms": job["p99_ms"],
        }
        C.emit(**row)
        rows.append(row)

    written = await asyncio.to_thread(insert_metric, db_url, job_id)
    deadline = time.monotonic() + 30
    while any(s.first_metric_at is None for s in streams) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    arrived = [s.first_metric_at - written for s in streams if s.first_metric_at is not None]
    fanout = {
        "bench": "streams_fanout",
        "streams": len(streams),
        "received": len(arrived),
        "p50_ms": round(statistics.median(arrived) * 1000),
        "max_ms": round(max(arrived) * 1000),
    }
    C.emit(**fanout)
    extra = Stream()
    await extra.open(port, key, job_id)
    C.emit(bench="streams_over_limit", status=extra.status)
    extra.close()
    for s in streams:
        s.close()
    return rows, fanout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default="0,250,500,1000,2000")
    parser.add_argument("--healthz", type=int, default=100, help="requests per latency figure")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]

    import httpx

    from tests.factories import build_tiny_text_model, text_csv

    tmp = Path(tempfile.mkdtemp(prefix="bench-streams-"))
    var_dir, models_dir = tmp / "var", tmp / "models"
    build_tiny_text_model(models_dir / "tiny-bert")
    var_dir.mkdir(parents=True)
    limits = {"FINETUNE_STREAM_MAX_CONNECTIONS": str(max(levels)), "FINETUNE_STREAM_MAX_PER_TEAM": str(max(levels))}
    env = {**C.service_env(var_dir, models_dir), **limits}
    with C.running_service(tmp, env, command="api", port=args.port) as service:
        url, key, proc = service.url, service.key, service.proc
        port = int(url.rsplit(":", 1)[1])
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
            dataset = client.post(
                "/datasets", files={"file": ("r.csv", text_csv())}, data={"task": "text_classification"}
            )
            dataset.raise_for_status()
            job = client.post("/jobs", json={"dataset_id": dataset.json()["id"], "base_model": "tiny-bert"})
            job.raise_for_status()
            job_id = job.json()["id"]
        C.log(f"API pid {proc.pid} on {url}; job {job_id} stays queued (no worker)")
        db_url = f"sqlite:///{var_dir / 'finetune.db'}"
        rows, fanout = asyncio.run(measure(url, port, key, job_id, levels, args.healthz, db_url, proc.pid))
    if args.keep:
        C.log(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    cols = ["streams", "refused", "api_rss_mb", "api_fds", "open_step_s", "healthz_p50_ms", "healthz_p99_ms"]
    cols += ["get_job_p50_ms", "get_job_p99_ms"]
    print(C.table(rows, cols, title="idle live streams on one API process (embedded default)"))
    print(f"one new metric row reached {fanout['received']}/{fanout['streams']} streams: "
          f"p50 {fanout['p50_ms']} ms, max {fanout['max_ms']} ms after its commit")  # fmt: skip


if __name__ == "__main__":
    main()
