"""The `finetune` client commands (finetune_client/cli.py) against the real service: tables, --json, exit codes,
the config file, and `jobs watch` in a pseudo-terminal."""

from __future__ import annotations

import json
import os
import pty
import select
import stat
import subprocess
import time

import pytest
from typer.testing import CliRunner

from app import processes
from app.cli import cli
from tests.factories import image_bytes, text_csv

HP = ["--hp", "epochs=10", "--hp", "batch_size=8", "--hp", "learning_rate=0.003", "--hp", "max_length=16"]


def finetune(cli_env: dict[str, str], *args: str, code: int = 0):
    result = CliRunner().invoke(cli, list(args), env=cli_env)
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    return result


def as_json(cli_env: dict[str, str], *args: str):
    return json.loads(finetune(cli_env, *args, "--json").stdout)


@pytest.fixture(scope="module")
def dataset(cli_env, tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "reviews.csv"
    path.write_bytes(text_csv())
    return as_json(cli_env, "datasets", "upload", str(path), "--name", "cli reviews")  # the task from the extension


@pytest.fixture(scope="module")
def watched(cli_env, dataset):
    """`jobs create --watch --json`: one JSON object per line, the last one the outcome with the report."""
    result = finetune(cli_env, "jobs", "create", "--dataset", dataset["id"], "--base-model", "tiny-bert", *HP,
                      "--hp", 'early_stopping=null', "--watch", "--json")  # fmt: skip
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_datasets_upload_list_show(cli_env, dataset):
    assert dataset["task"] == "text_classification" and dataset["name"] == "cli reviews"
    assert dataset["labels"] == ["negative", "positive"]
    assert dataset["id"] in [d["id"] for d in as_json(cli_env, "datasets", "list")]
    shown = finetune(cli_env, "datasets", "show", dataset["id"]).stdout
    assert "cli reviews" in shown and "TRAIN" in shown and "negative" in shown and "24" in shown
    listed = finetune(cli_env, "datasets", "list", "--limit", "1").stdout
    assert "CLASSES" in listed and dataset["id"] in listed


def test_jobs_create_watch_json_ends_with_the_report(watched):
    created, *progress, finished = watched
    assert created["status"] == "queued" and created["hyperparameters"]["epochs"] == 10
    assert progress and all(line["type"] == "progress" for line in progress)
    assert any("train_loss" in line["metrics"] for line in progress)
    assert [line["job"]["step"] for line in progress] == sorted(line["job"]["step"] for line in progress)
    assert finished["type"] == "finished" and finished["job"]["status"] == "succeeded"
    assert 0 <= finished["report"]["accuracy"] <= 1 and "majority_class" in finished["report"]["baselines"]


def test_jobs_list_show_report_and_models(cli_env, watched):
    job = watched[-1]["job"]
    assert job["id"] in [j["id"] for j in as_json(cli_env, "jobs", "list", "--status", "succeeded")]
    assert as_json(cli_env, "jobs", "show", job["id"])["model_id"] == job["model_id"]
    shown = finetune(cli_env, "jobs", "show", job["id"]).stdout
    assert "succeeded" in shown and "learning_rate=0.003" in shown
    listed = finetune(cli_env, "jobs", "list").stdout
    assert job["id"] in listed and "STATUS" in listed
    report = finetune(cli_env, "jobs", "report", job["id"]).stdout
    assert "fine-tuned" in report and "majority class" in report and "confusion matrix" in report
    assert as_json(cli_env, "jobs", "report", job["id"])["per_class"]["positive"]["support"] > 0
    models = finetune(cli_env, "models", "list").stdout
    assert job["model_id"] in models and "TEST ACC" in models
    assert job["model_id"] in [m["id"] for m in as_json(cli_env, "models", "list")]


def test_aliases_set_and_predict(cli_env, watched):
    model_id = watched[-1]["job"]["model_id"]
    said = finetune(cli_env, "aliases", "set", "cli-test", model_id, "--force").stdout
    assert f"alias cli-test -> {model_id}" in said
    alias = as_json(cli_env, "aliases", "set", "cli-test", model_id)
    assert (alias["name"], alias["model_id"]) == ("cli-test", model_id)
    assert "cli-test" in finetune(cli_env, "aliases", "list").stdout
    answer = as_json(cli_env, "predict", "a great superb film", "an awful plot", "--model", "cli-test", "--top-k", "2")
    assert answer["model_id"] == model_id and [len(top) for top in answer["predictions"]] == [2, 2]
    table = finetune(cli_env, "predict", "a great superb film", "--model", "cli-test").stdout
    assert "a great superb film" in table and ("positive" in table or "negative" in table)


def test_cancel_and_watch_a_cancelled_job_exits_3(cli_env, dataset):
    job = as_json(cli_env, "jobs", "create", "-d", dataset["id"], "-m", "tiny-bert", "--hp", "epochs=200")
    assert finetune(cli_env, "jobs", "cancel", job["id"]).stdout.startswith(f"job {job['id']}: ")
    out = finetune(cli_env, "jobs", "watch", job["id"], code=3).stdout
    assert f"job {job['id']} cancelled" in out and "cancel" in out


def test_errors_print_the_detail_and_exit_1(cli_env, tmp_path):
    missing = finetune(cli_env, "jobs", "show", "nope", code=1)
    assert "error: 404 Not found: No job 'nope'" in missing.stderr
    invalid = finetune(cli_env, "jobs", "create", "-d", "x", "-m", "tiny-bert", "--hp", "epochs=0", code=1)
    assert "error: 422" in invalid.stderr and "hyperparameters.epochs" in invalid.stderr
    assert "--hp" in finetune(cli_env, "jobs", "create", "-d", "x", "-m", "m", "--hp", "epochs", code=2).stderr
    image = tmp_path / "x.png"
    image.write_bytes(image_bytes((1, 2, 3), seed=0))
    wrong = {**cli_env, "FINETUNE_API_KEY": "ftk_" + "w" * 40}
    assert "error: 401" in finetune(wrong, "predict", "--image", str(image), code=1).stderr
    no_key = {k: v for k, v in cli_env.items() if k != "FINETUNE_API_KEY"}
    assert "No API key" in finetune({**no_key, "FINETUNE_API_KEY": ""}, "models", "list", code=1).stderr


def test_configure_writes_a_private_config_file_the_commands_read(cli_env, key, tmp_path):
    config = tmp_path / "finetune" / "config.toml"
    only_file = {"FINETUNE_CONFIG": str(config), "FINETUNE_URL": "", "FINETUNE_API_KEY": ""}
    said = finetune(only_file, "configure", "--url", cli_env["FINETUNE_URL"], "--api-key", key).stdout
    assert "team team-a" in said and str(config) in said
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert isinstance(as_json(only_file, "models", "list"), list)
    refused = finetune(only_file, "configure", "--url", cli_env["FINETUNE_URL"], "--api-key", "ftk_bad", code=1)
    assert "not saved" in refused.stderr and key in config.read_text()


def test_watch_draws_a_live_progress_bar_in_a_terminal(service, cli_env, dataset):
    """`jobs create --watch` in a pseudo-terminal: rich's bar with step/total, epoch, loss and ETA, then the
    report's summary."""
    command = processes.cli_command(
        "jobs", "create", "-d", dataset["id"], "-m", "tiny-bert", *HP, "--hp", "early_stopping=null", "--watch"
    )
    parent, child = pty.openpty()
    proc = subprocess.Popen(
        command, stdin=child, stdout=child, stderr=child, cwd=processes.ROOT,
        env={**os.environ, **cli_env, "TERM": "xterm-256color", "COLUMNS": "160"},
    )  # fmt: skip
    os.close(child)
    screen = b""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        ready, _, _ = select.select([parent], [], [], 1)
        if ready:
            try:
                chunk = os.read(parent, 65536)
            except OSError:  # the terminal closed: the command exited
                break
            if not chunk:
                break
            screen += chunk
    os.close(parent)
    assert proc.wait(timeout=30) == 0, screen[-2000:]
    text = screen.decode(errors="replace")
    assert "\x1b[" in text  # drawn in place with terminal escapes, not line by line
    assert "running" in text and "epoch" in text and "loss 0." in text and "/60" in text
    assert "━" in text  # rich's bar
    assert "succeeded" in text and "fine-tuned" in text and "majority class" in text
