"""The client: `Client()` finds the service and key (see config.py), then `client.datasets`, `client.jobs`,
`client.models`, `client.aliases`, `client.sweeps`,
`client.predict()` and `client.usage()` speak the REST API."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import httpx

from finetune_client.config import resolve
from finetune_client.jobs import Jobs
from finetune_client.predictions import Predictions
from finetune_client.resources import Resource, first
from finetune_client.sweeps import Sweeps
from finetune_client.transport import Transport
from finetune_client.types import Alias, AliasStats, Dataset, Model, PredictResult, Usage

FileInput = str | Path | bytes  # a path to read, or the file's content


class Datasets(Resource):
    def upload(
        self,
        file: FileInput,
        task: str,
        *,
        name: str | None = None,
        filename: str | None = None,
        text_column: str | None = None,
        label_column: str | None = None,
        idempotency_key: str | None = None,
    ) -> Dataset:
        """Upload a dataset: a zip of class folders (task "image_classification") or a CSV/JSONL file with text and
        label columns ("text_classification"). Bytes need a `filename` whose extension says the format. An
        Idempotency-Key is sent (a new one unless given), so a retry never stores it twice."""
        if not isinstance(file, bytes):
            filename = filename or Path(file).name
        elif not filename:
            raise ValueError("uploading bytes needs a filename (its extension tells the format: .zip, .csv, .jsonl)")
        fields = {"task": task, "name": name, "text_column": text_column, "label_column": label_column}
        data = {k: v for k, v in fields.items() if v is not None}
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        opened: list[IO[bytes]] = []
        http = self._transport.http

        def build() -> httpx.Request:
            content: bytes | IO[bytes] = file if isinstance(file, bytes) else open(file, "rb")  # noqa: SIM115
            if not isinstance(content, bytes):
                opened.append(content)  # read by the send; reopened for a retry, closed at the end
            return http.build_request(
                "POST", "/datasets", files={"file": (filename, content)}, data=data, headers=headers
            )

        try:
            response = self._transport.send(build, idempotent=True)
        finally:
            for f in opened:
                f.close()
        return Dataset.model_validate(response.json())

    def list(self, *, limit: int | None = None, page_size: int | None = None) -> list[Dataset]:
        """The team's datasets, newest first (all, or the newest `limit`)."""
        return first(self._pages("/datasets", Dataset, {}, page_size if limit is None else min(limit, 200)), limit)

    def get(self, dataset_id: str) -> Dataset:
        return Dataset.model_validate(self._call("GET", f"/datasets/{dataset_id}"))

    def delete(self, dataset_id: str) -> None:
        self._call("DELETE", f"/datasets/{dataset_id}")


class Models(Resource):
    def list(self, *, limit: int | None = None, page_size: int | None = None) -> list[Model]:
        """The team's fine-tuned models, newest first, each with its test metrics."""
        return first(self._pages("/models", Model, {}, page_size if limit is None else min(limit, 200)), limit)

    def get(self, model_id: str) -> Model:
        return Model.model_validate(self._call("GET", f"/models/{model_id}"))

    def delete(self, model_id: str) -> None:
        """Delete a model and its files (a Conflict while an alias routes to it or a job trains from it)."""
        self._call("DELETE", f"/models/{model_id}")


class Aliases(Resource):
    def set(
        self,
        name: str,
        model_id: str,
        *,
        force: bool = False,
        shadow_model_id: str | None = None,
        runtime: str = "torch",
    ) -> Alias:
        """Point alias `name` (e.g. "production", what /predict uses by default) at a model, loaded and warmed on the
        service before it takes traffic. A model flagged below_baseline is refused (Conflict) unless `force`; a
        `shadow_model_id` answers a copy of the traffic, compared in `stats()`, never returned. `runtime` "onnx" or
        "int8" serves it faster (converted once; its test accuracy lands in `models.get(id).runtimes`)."""
        body: dict[str, Any] = {"model_id": model_id, "force": force, "runtime": runtime}
        if shadow_model_id is not None:
            body["shadow_model_id"] = shadow_model_id
        return Alias.model_validate(self._call("PUT", f"/aliases/{name}", json=body))

    def split(
        self,
        name: str,
        weights: Mapping[str, int],
        *,
        force: bool = False,
        shadow_model_id: str | None = None,
        runtime: str = "torch",
    ) -> Alias:
        """Split alias `name` between models by weight (percentages adding up to 100, e.g. {stable: 90, canary: 10});
        `predict(..., routing_key=...)` keeps a caller on one model."""
        routes = [{"model_id": m, "weight": w} for m, w in weights.items()]
        body: dict[str, Any] = {"routes": routes, "force": force, "runtime": runtime}
        if shadow_model_id is not None:
            body["shadow_model_id"] = shadow_model_id
        return Alias.model_validate(self._call("PUT", f"/aliases/{name}", json=body))

    def list(self) -> list[Alias]:
        return [Alias.model_validate(a) for a in self._call("GET", "/aliases")]

    def stats(self, name: str) -> AliasStats:
        """Requests, errors and mean latency per model of the alias, and its shadow's agreement with them."""
        return AliasStats.model_validate(self._call("GET", f"/aliases/{name}/stats"))


class Client(Resource):
    """The fine-tuning service's REST API.

    `url` and `api_key` default to FINETUNE_URL / FINETUNE_API_KEY, then the config file (FINETUNE_CONFIG, default
    ~/.config/finetune/config.toml). 429 and 503 answers are retried after their Retry-After (at most
    `max_retries` times, waiting at most `max_retry_wait` seconds each: a longer wait is raised at once), and so
    are connection failures of requests that are safe to repeat. Errors raise ApiError subclasses (NotFound,
    Conflict, InvalidRequest, RateLimited, ...) carrying the service's problem detail."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        max_retries: int = 3,
        max_retry_wait: float = 30.0,
        http: httpx.Client | None = None,
    ) -> None:
        connection = resolve(url, api_key)
        self.url = connection.url
        transport = Transport(
            connection.url, connection.api_key, timeout=timeout, max_retries=max_retries,
            max_retry_wait=max_retry_wait, http=http,
        )  # fmt: skip
        super().__init__(transport)
        self.datasets = Datasets(transport)
        self.jobs = Jobs(transport)
        self.models = Models(transport)
        self.aliases = Aliases(transport)
        self.sweeps = Sweeps(transport)
        self.predictions = Predictions(transport)

    def predict(
        self,
        texts: Sequence[str] | None = None,
        images: Sequence[FileInput] | None = None,
        *,
        model: str | None = None,
        top_k: int = 1,
        calibrated: bool = False,
        routing_key: str | None = None,
    ) -> PredictResult:
        """Top-k labels for each text, or each image (paths or bytes), from `model` (a model id or an alias;
        default: the alias "production"); `calibrated`: scores scaled by the temperature fitted on the model's
        validation split; `routing_key` keeps a caller on one model of a split alias."""
        if (texts is None) == (images is None):
            raise ValueError("pass texts or images (one of them)")
        body: dict[str, Any] = {"top_k": top_k}
        if calibrated:
            body["calibrated"] = True
        if model is not None:
            body["model"] = model
        if routing_key is not None:
            body["routing_key"] = routing_key
        if texts is not None:
            body["texts"] = list(texts)
        else:
            body["images"] = [base64.b64encode(_read(image)).decode() for image in images or ()]
        return PredictResult.model_validate(self._call("POST", "/predict", json=body, idempotent=True))

    def usage(self) -> Usage:
        """What the team holds against its limits (jobs queued or running, bytes stored)."""
        return Usage.model_validate(self._call("GET", "/usage"))

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read(file: FileInput) -> bytes:
    return file if isinstance(file, bytes) else Path(file).read_bytes()
