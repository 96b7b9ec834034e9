"""The embedded broker (kombu's SQLAlchemy transport on SQLite) when several processes start at once: kombu alone
creates its tables and queue rows lazily in each process, and the losers of that race died at start ("table
kombu_queue already exists", a UNIQUE failure on the queue's name). `prepare_embedded_broker` creates them once,
under a file lock."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from app.processes import ROOT

PREPARE = """
import sys, time
from app.config import Settings
from app.queue import prepare_embedded_broker
start = float(sys.argv[2])
while time.time() < start:
    time.sleep(0.001)
prepare_embedded_broker(Settings(broker_url=sys.argv[1], var_dir=sys.argv[3]), {sys.argv[4], "training"})
"""


def test_processes_that_start_together_all_get_the_broker_and_each_queue_once(tmp_path: Path):
    broker = tmp_path / "broker.db"
    url = f"sqla+sqlite:///{broker}"
    start = time.time() + 8  # every process has imported torch and the app by then, so they race for real
    queues = ["training", "training", "training.fair", "training.x"]
    procs = [
        subprocess.Popen([sys.executable, "-c", PREPARE, url, str(start), str(tmp_path), queue], cwd=ROOT,
                         stderr=subprocess.PIPE, text=True)
        for queue in queues
    ]  # fmt: skip
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * len(procs), errors
    names = sorted(row[0] for row in sqlite3.connect(broker).execute("SELECT name FROM kombu_queue"))
    assert names == ["training", "training.fair", "training.x"]


def test_redis_brokers_are_left_alone(tmp_path: Path):
    from app.config import Settings
    from app.queue import prepare_embedded_broker

    prepare_embedded_broker(Settings(broker_url="redis://127.0.0.1:1/0", var_dir=tmp_path), ["training"])
    assert list(tmp_path.iterdir()) == []  # no lock file, no connection attempted (port 1 answers nothing)
