"""The API process's hot path: nothing costs a /predict request a hop to the threadpool when its key, routes and model
are in memory, and those lookups are refreshed ahead of their expiry (app/ttl_cache.py); Python's garbage collector
(app/inference/memory.py) leaves out what the process imported and loaded, while a model that leaves the cache is
still freed."""

from __future__ import annotations

import asyncio
import gc
import inspect
import shutil
import threading
import time
import typing
import weakref
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from app.config import Settings
from app.inference.batcher import Batcher
from app.inference.cache import LoadedModel, ModelCache
from app.inference.passing_thread import in_passing_thread
from app.inference.router import predict_endpoint
from app.main import create_app
from app.tasktypes.common import Preprocessing
from app.ttl_cache import TtlCache


@pytest.fixture(autouse=True)
def unfrozen():
    """This test process's objects go back to the collector after each test (the service's processes stay frozen)."""
    yield
    gc.unfreeze()


@pytest.fixture(scope="module")
def served_folder(tmp_path_factory, models_dir: Path) -> Path:
    """A text classifier folder as the registry stores one (tiny BERT, two labels, its preprocessing file)."""
    folder = tmp_path_factory.mktemp("served") / "model"
    shutil.copytree(models_dir / "tiny-bert", folder)
    Preprocessing("text_classification", ["neg", "pos"], max_length=16).save(folder)
    return folder


def test_predict_and_the_app_wide_dependencies_run_on_the_event_loop(tmp_path: Path) -> None:
    """FastAPI runs a sync (`def`) dependency in its threadpool: for /predict that is a hop there and back per request,
    on top of the batcher's."""
    app = create_app(Settings(var_dir=tmp_path))
    for dependency in app.router.dependencies:
        assert inspect.iscoroutinefunction(dependency.dependency), dependency.dependency
    assert inspect.iscoroutinefunction(predict_endpoint)
    hints = typing.get_type_hints(predict_endpoint, include_extras=True)
    calls = [marker.dependency for hint in hints.values() for marker in getattr(hint, "__metadata__", ())]
    assert calls, "the bearer credentials are a dependency"
    for call in calls:
        method = call if inspect.isfunction(call) else type(call).__call__  # an HTTPBearer instance: its __call__
        assert inspect.iscoroutinefunction(method), call


def test_the_app_freezes_what_it_imported_once_started(tmp_path: Path) -> None:
    gc.unfreeze()
    with TestClient(create_app(Settings(var_dir=tmp_path))) as client:
        assert client.get("/healthz").status_code == 200
        # torch, transformers, FastAPI and the app: hundreds of thousands of objects no collection walks again
        assert gc.get_freeze_count() > 100_000


async def _predict(loaded: LoadedModel) -> list[list[int]]:
    assert loaded.batcher is not None
    result = await loaded.batcher.submit(loaded.encode(["a short text", "another one"]), 2, 1)
    return result.indices


def test_a_model_that_leaves_the_cache_is_freed_though_frozen(served_folder: Path) -> None:
    cache = ModelCache(1, threads=1)
    try:
        first = cache.get("first", lambda: served_folder, "team")
        assert gc.get_freeze_count() > 0  # its objects were frozen after the load
        assert len(asyncio.run(_predict(first))) == 2  # its batcher thread ran a forward pass
        model, loaded = weakref.ref(first.model), weakref.ref(first)
        del first
        second = cache.get("second", lambda: served_folder, "team")  # evicts the first
        assert cache.loaded_ids() == ["second"]
        assert loaded() is None and model() is None  # its weights went back, frozen or not
        assert len(asyncio.run(_predict(second))) == 2
        cache.discard("second")
        assert cache.loaded_ids() == []
    finally:
        cache.close()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_lookup_is_refreshed_ahead_once_and_still_expires_at_its_ttl() -> None:
    clock = Clock()
    cache: TtlCache[str] = TtlCache(1.0, clock=clock)
    cache.put("key", "team-a")
    clock.now = 0.4
    assert cache.refresh_due("key") is None  # young
    clock.now = 0.6
    token = cache.refresh_due("key")
    assert token is not None and cache.refresh_due("key") is None  # one refresh at a time
    assert cache.get("key") == "team-a"  # the others go on with what is in memory
    clock.now = 0.7
    cache.refreshed("key", "team-a", token)
    clock.now = 1.5
    assert cache.get("key") == "team-a"  # refreshed at 0.7: trusted until 1.7
    clock.now = 1.7
    assert cache.get("key") is None  # a refresh that never lands does not extend the bound
    # A refresh that finds the key revoked drops it: the next request looks it up and is refused.
    cache.put("key", "team-a")
    clock.now = 2.3
    token = cache.refresh_due("key")
    assert token is not None
    cache.refreshed("key", None, token)
    assert cache.get("key") is None and cache.stale("key") is None


def test_a_refresh_that_began_before_an_invalidation_is_ignored() -> None:
    clock = Clock()
    cache: TtlCache[str] = TtlCache(1.0, clock=clock)
    cache.put(("team", "production"), "model-a")
    clock.now = 0.5
    token = cache.refresh_due(("team", "production"))
    assert token is not None  # it reads the alias: still model-a
    cache.discard(lambda key: key[0] == "team")  # the alias moves through this process meanwhile
    cache.put(("team", "production"), "model-b")
    cache.refreshed(("team", "production"), "model-a", token)
    assert cache.get(("team", "production")) == "model-b"


def test_the_batcher_waits_for_the_clients_it_just_answered_and_a_lone_client_never_waits() -> None:
    """Closed-loop clients come back right after their answers: the next batch waits (up to max_wait) for as many as
    the last one answered, instead of running the first to arrive alone while the others queue behind it."""
    sizes: list[int] = []

    def forward(texts: list[str]) -> torch.Tensor:
        sizes.append(len(texts))
        return torch.zeros(len(texts), 2)

    preparing = [True]
    batcher = Batcher(forward, max_batch=4, max_wait_s=2.0, others_preparing=lambda: preparing[0])

    async def scenario() -> float:
        # four requests in flight together (a batch closes at max_batch 4)
        await asyncio.gather(*(batcher.submit(["text"], 1, 1) for _ in range(4)))
        preparing[0] = False
        # their clients come back one after another: one batch again
        first = batcher.submit(["text"], 1, 1)
        await asyncio.sleep(0.3)
        await asyncio.gather(first, *(batcher.submit(["text"], 1, 1) for _ in range(3)))
        # a client alone: after its answer, its next request runs at once (the 2 s max_wait would show)
        await batcher.submit(["text"], 1, 1)  # waits for the four it expects, then runs alone
        started = time.monotonic()
        await batcher.submit(["text"], 1, 1)
        return time.monotonic() - started

    try:
        lone = asyncio.run(scenario())
    finally:
        batcher.close()
    assert sizes == [4, 4, 1, 1], sizes
    assert lone < 1.0, lone


def test_every_models_forward_passes_and_warm_ups_run_on_the_same_threads(served_folder: Path) -> None:
    """Where requests' forward passes run: a forward on another thread (a warm-up on the alias move's, a second model's
    batcher) left that thread's math-library threads behind and made single requests 2.4x slower."""
    cache = ModelCache(2, threads=1)
    ran_on: set[str] = set()
    try:
        for name in ("first", "second"):
            loaded = cache.warm(name, lambda: served_folder, "team")
            assert loaded.batcher is not None and loaded.batcher.shared is cache.forward_threads
            run = loaded.run
            assert run is not None

            def noting(inputs, run=run):
                ran_on.add(threading.current_thread().name)
                return run(inputs)

            loaded.run = noting
            assert len(asyncio.run(_predict(loaded))) == 2
        assert ran_on == {"predict-forward-0"}
        assert cache.forward_threads.started == 1
    finally:
        cache.close()


def test_torch_work_off_the_forward_threads_runs_in_a_thread_that_ends() -> None:
    seen: list[threading.Thread] = []

    def work(x: int) -> int:
        seen.append(threading.current_thread())
        return x * 2

    assert in_passing_thread(work, 21) == 42
    assert seen[0] is not threading.current_thread() and not seen[0].is_alive()

    def broken() -> None:
        raise ValueError("cannot convert")

    with pytest.raises(ValueError, match="cannot convert"):
        in_passing_thread(broken)
