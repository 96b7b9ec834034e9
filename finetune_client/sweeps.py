"""Sweeps: start one, list, read it and its trials, what mattered (importances), cancel, and wait() by polling
GET /sweeps/{id}."""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable, Mapping
from typing import Any

from finetune_client.errors import WaitTimeout
from finetune_client.resources import Resource, first
from finetune_client.types import Importances, Sweep, Trial


class Sweeps(Resource):
    def create(
        self,
        dataset_id: str,
        base_model: str,
        search_space: Mapping[str, Mapping[str, Any]],
        hyperparameters: Mapping[str, Any] | None = None,
        *,
        objective: Mapping[str, Any] | str | None = None,
        max_trials: int | None = None,
        parallelism: int | None = None,
        sampler: str | None = None,
        pruner: Mapping[str, Any] | str | None = None,
        budget: Mapping[str, Any] | None = None,
        seed: int | None = None,
        promote_alias: str | None = None,
    ) -> Sweep:
        """Start a hyperparameter sweep: `search_space` maps each searched hyperparameter to its range
        (`{"learning_rate": {"type": "log_uniform", "low": 1e-5, "high": 1e-3}, "batch_size": {"type": "choice",
        "values": [16, 32]}}`); `hyperparameters` are fixed for every trial. `objective` is a metric name
        ("val_accuracy", "val_loss", "val_macro_f1") or {"metric", "direction"}; `pruner` a type ("median", "asha",
        "hyperband", "none") or an object; `budget` {"steps": N} and/or {"seconds": S}. What is not given takes the
        service's default. POST /sweeps takes no Idempotency-Key, so the request is not repeated after a lost
        answer (look with `list()` before starting it again)."""
        if isinstance(objective, str):
            objective = {"metric": objective}
        optional = {
            "objective": objective, "max_trials": max_trials, "parallelism": parallelism, "sampler": sampler,
            "pruner": pruner, "budget": budget, "seed": seed, "promote_alias": promote_alias,
        }  # fmt: skip
        body: dict[str, Any] = {
            "dataset_id": dataset_id,
            "base_model": base_model,
            "search_space": dict(search_space),
            "hyperparameters": dict(hyperparameters or {}),
            **{k: v for k, v in optional.items() if v is not None},
        }
        return Sweep.model_validate(self._call("POST", "/sweeps", json=body))

    def list(self, *, limit: int | None = None, page_size: int | None = None) -> builtins.list[Sweep]:
        """The team's sweeps, newest first (all, or the newest `limit`)."""
        return first(self._pages("/sweeps", Sweep, {}, page_size if limit is None else min(limit, 200)), limit)

    def get(self, sweep_id: str) -> Sweep:
        """The sweep: status, counts of trials by state, the best trial so far, the budget used."""
        return Sweep.model_validate(self._call("GET", f"/sweeps/{sweep_id}"))

    def trials(self, sweep_id: str) -> builtins.list[Trial]:
        """Every trial in the order started: its hyperparameters, job, state, objective and steps."""
        return [Trial.model_validate(t) for t in self._call("GET", f"/sweeps/{sweep_id}/trials")]

    def importances(self, sweep_id: str) -> Importances:
        """How much each searched hyperparameter mattered (fANOVA); a Conflict until 3 trials completed, or when
        they all scored the same."""
        return Importances.model_validate(self._call("GET", f"/sweeps/{sweep_id}/importances"))

    def cancel(self, sweep_id: str) -> Sweep:
        """Start no more trials: the queued ones are cancelled at once, the running ones at their next step."""
        return Sweep.model_validate(self._call("POST", f"/sweeps/{sweep_id}/cancel", idempotent=True))

    def wait(
        self,
        sweep_id: str,
        timeout: float | None = None,
        on_progress: Callable[[Sweep], None] | None = None,
        *,
        poll_interval: float = 2.0,
    ) -> Sweep:
        """Block until the sweep has ended (succeeded, failed or cancelled) and return it (check `sweep.status`).
        Polls GET /sweeps/{id} every `poll_interval` seconds; `on_progress(sweep)` is called with each answer that
        differs from the one before (status, counts, best trial, steps used). Raises WaitTimeout after `timeout`
        seconds (its `job` is the sweep as last seen)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        shown: tuple = ()
        while True:
            sweep = self.get(sweep_id)
            seen = (sweep.status, sweep.trials_started, sorted(sweep.counts.items()), sweep.best_trial,
                    sweep.budget_used.steps)  # fmt: skip
            if on_progress and seen != shown:
                on_progress(sweep)
            shown = seen
            if sweep.finished:
                return sweep
            if deadline is not None and time.monotonic() + poll_interval > deadline:
                raise WaitTimeout(f"sweep {sweep_id} is still {sweep.status}", sweep)
            time.sleep(poll_interval)
