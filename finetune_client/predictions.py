"""Batch prediction runs: score a dataset with a model on a worker, watch it, download its results, delete it."""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from finetune_client.errors import WaitTimeout
from finetune_client.resources import Resource, first
from finetune_client.types import PredictionRun

ResultFormat = Literal["csv", "jsonl"]


class Predictions(Resource):
    def create(
        self,
        dataset_id: str | None = None,
        *,
        file: str | Path | None = None,
        model: str | None = None,
        split: str | None = None,
        top_k: int = 1,
        text_column: str = "text",
        label_column: str | None = None,
    ) -> PredictionRun:
        """Score every row of a dataset (or one split: "train", "val", "test"), or of a CSV/JSONL `file` of texts
        (its `text_column`; `label_column` optional), with a model id or alias (default: the alias production) on a
        worker; `top_k` labels per row. Returns the queued run: `wait()`, then `download()`. Not repeated after a
        lost answer (look with `list()` before submitting it again)."""
        if (dataset_id is None) == (file is None):
            raise ValueError("give a dataset_id or a file (one of them)")
        if file is None:
            body = {"model": model, "dataset_id": dataset_id, "split": split, "top_k": top_k}
            return PredictionRun.model_validate(self._call("POST", "/predictions", json=body))
        fields = {"model": model, "top_k": str(top_k), "text_column": text_column, "label_column": label_column}
        data = {k: v for k, v in fields.items() if v is not None}
        files = {"file": (Path(file).name, Path(file).read_bytes())}
        return PredictionRun.model_validate(self._call("POST", "/predictions", data=data, files=files))

    def list(self, *, limit: int | None = None, page_size: int | None = None) -> builtins.list[PredictionRun]:
        """The team's runs, newest first."""
        pages = self._pages("/predictions", PredictionRun, {}, page_size if limit is None else min(limit, 200))
        return first(pages, limit)

    def get(self, run_id: str) -> PredictionRun:
        return PredictionRun.model_validate(self._call("GET", f"/predictions/{run_id}"))

    def cancel(self, run_id: str) -> PredictionRun:
        """Cancel a queued or running run (a Conflict once it has finished)."""
        return PredictionRun.model_validate(self._call("POST", f"/predictions/{run_id}/cancel", idempotent=True))

    def delete(self, run_id: str) -> None:
        """Delete a finished run with its uploaded file and results, freeing their storage (a Conflict while it is
        queued or running: cancel it first)."""
        self._call("DELETE", f"/predictions/{run_id}")

    def wait(
        self,
        run_id: str,
        timeout: float | None = None,
        on_progress: Callable[[PredictionRun], None] | None = None,
        *,
        poll_interval: float = 1.0,
    ) -> PredictionRun:
        """Block until the run has ended (succeeded, failed or cancelled) and return it; `on_progress(run)` is
        called whenever its status or rows_done changes. Raises WaitTimeout after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        shown: tuple = ()
        while True:
            run = self.get(run_id)
            if on_progress and (run.status, run.rows_done) != shown:
                on_progress(run)
            shown = (run.status, run.rows_done)
            if run.finished:
                return run
            if deadline is not None and time.monotonic() > deadline:
                raise WaitTimeout(f"prediction run {run_id} still {run.status} after {timeout} s", run)
            time.sleep(poll_interval)

    def download(self, run_id: str, path: str | Path, *, format: ResultFormat = "csv") -> Path:
        """Stream a succeeded run's results to `path` (a Conflict while the run has not succeeded); the path."""
        http = self._transport.http
        response = self._transport.send(
            lambda: http.build_request("GET", f"/predictions/{run_id}/results", params={"format": format}),
            idempotent=True,
            stream=True,
        )
        target = Path(path)
        try:
            with open(target, "wb") as out:
                for chunk in response.iter_bytes():
                    out.write(chunk)
        finally:
            response.close()
        return target
