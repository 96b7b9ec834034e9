"""Dynamic batching: concurrent requests for one model are merged into one forward pass.

Each served model has a batcher: a queue, worked by the API process's forward threads (`ForwardThreads`, shared by
all models; a batcher made alone has a set of its own). A request submits its already-encoded
inputs and awaits an asyncio future (it holds no threadpool thread while it waits). A worker takes the first
pending request and keeps collecting for at most `max_wait_s`, until `max_batch` inputs, while another request is
still being prepared, or while fewer requests wait than it expects (those the last forward pass answered, whose
clients often come straight back: see `_expected_requests`), runs one forward pass over the merged inputs and hands
each request its own top-k. The forward releases the GIL, so the event loop keeps parsing requests while it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from app.observability.metrics import observe_predict_batch

# Encoded inputs are token id lists (text) or an N x 3 x H x W uint8 tensor (images): both slice with [a:b].
Encoded = Any


@dataclass(frozen=True)
class BatchResult:
    """One request's share of a forward pass: the top-k classes of each of its inputs."""

    scores: list[list[float]]  # per input, the k highest probabilities, highest first
    indices: list[list[int]]  # per input, their class indices
    batch_size: int  # inputs in the forward pass that served this request
    batch_requests: int  # requests merged into that forward pass


@dataclass
class _Pending:
    encoded: Encoded
    size: int
    top_k: int
    temperature: float  # the logits are divided by it before the softmax (1.0: the raw scores)
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[BatchResult]
    queued_at: float = field(default_factory=time.monotonic)


class PreparingCounter:
    """How many predict requests are between arriving and submitting: worth waiting for while non-zero."""

    def __init__(self) -> None:
        self.value = 0  # changed on the event loop thread only; read by batcher threads

    def __enter__(self) -> PreparingCounter:
        self.value += 1
        return self

    def __exit__(self, *_: object) -> None:
        self.value -= 1

    def busy(self) -> bool:
        return self.value > 0


def concat(parts: Sequence[Encoded]) -> Encoded:
    """Merge encoded inputs of several requests, in order."""
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(list(parts))
    return [item for part in parts for item in part]


class Batcher:
    """A queue of pending requests for one model, served in merged forward passes on the process's forward threads
    (`ForwardThreads`, shared by every model's batcher; a batcher made alone gets a set of its own).

    Each forward runs on `threads` torch intra-op threads (the cache's default: all cores). On an otherwise idle
    2-core machine two threads served 225 req/s at 32 clients against 173 with one (bench/predict.py). When the API
    shares its cores with other busy processes (a training worker), one thread can serve twice as many as two:
    OpenMP's threads meet at a barrier after every op, and each barrier stalls whenever another process holds a
    core; FINETUNE_PREDICT_THREADS=1 is the setting for such a machine. With several workers, one collects the
    next batch while the others run theirs (measured no faster on 2 cores).
    """

    def __init__(
        self,
        forward: Callable[[Encoded], torch.Tensor],  # encoded inputs -> logits (inputs x classes)
        *,
        max_batch: int,
        max_wait_s: float,
        workers: int = 1,
        threads: int | None = None,
        others_preparing: Callable[[], bool] = lambda: True,
        name: str = "batcher",
        shared: ForwardThreads | None = None,
    ) -> None:
        """`shared`: the process's forward threads (ModelCache's); without, `workers` threads of its own on `threads`
        torch threads each."""
        self.forward = forward
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.others_preparing = others_preparing
        self.name = name
        self._own_threads = shared is None
        self.shared = shared if shared is not None else ForwardThreads(workers, threads)
        self._cond = self.shared.cond
        self._pending: deque[_Pending] = deque()
        self._pending_inputs = 0
        self._collecting = False  # one worker at a time gathers the next batch
        self._answered = 0  # requests the last forward pass answered
        self._answered_at = 0.0  # when (monotonic)

    def submit(self, encoded: Encoded, size: int, top_k: int, temperature: float = 1.0) -> asyncio.Future[BatchResult]:
        """Queue `size` encoded inputs; the future resolves with their top-k classes, scored by
        softmax(logits / temperature) (call on the event loop)."""
        loop = asyncio.get_running_loop()
        item = _Pending(encoded, size, top_k, temperature, loop, loop.create_future())
        with self._cond:
            self._pending.append(item)
            self._pending_inputs += size
            self.shared.wake(self)
        return item.future

    def close(self) -> None:
        """The model was evicted or the app stops: threads of its own exit once nothing is pending (shared ones
        serve what it still has pending and go on)."""
        if self._own_threads:
            self.shared.close()

    def _gather(self) -> list[_Pending]:
        """With a request pending (called under the lock): wait briefly for company, then take the batch."""
        self._collecting = True
        deadline = time.monotonic() + self.max_wait_s
        expected = self._expected_requests()
        while self._pending_inputs < self.max_batch and (self.others_preparing() or len(self._pending) < expected):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._cond.wait(remaining)
        batch = self._take()
        self._collecting = False
        self._cond.notify_all()  # another worker may gather what is left, or what comes next
        return batch

    def _expected_requests(self) -> int:
        """How many requests the next batch may expect (called under the lock): those already waiting that were
        queued before the last forward pass answered, plus the requests it answered, whose clients often send their
        next one at once. A lone client's next request comes after its answer, so it expects only itself and never
        waits; steady concurrent clients, which would otherwise settle into two half batches taking turns (one
        queued while the other runs), come back together within `max_wait_s`."""
        earlier = sum(1 for p in self._pending if p.queued_at < self._answered_at)
        return earlier + self._answered

    def _take(self) -> list[_Pending]:
        """Pending requests up to max_batch inputs (at least one request, however large; called under the lock)."""
        batch = [self._pending.popleft()]
        taken = batch[0].size
        while self._pending and taken + self._pending[0].size <= self.max_batch:
            item = self._pending.popleft()
            batch.append(item)
            taken += item.size
        self._pending_inputs -= taken
        return batch

    def _execute(self, batch: list[_Pending]) -> None:
        total = sum(p.size for p in batch)
        started = time.monotonic()
        observe_predict_batch(total, (started - p.queued_at for p in batch))
        try:
            merged = concat([p.encoded for p in batch])
            # A single request larger than max_batch runs in max_batch chunks, bounding activation memory.
            chunks = [self.forward(merged[i : i + self.max_batch]) for i in range(0, total, self.max_batch)]
            logits = torch.cat(chunks) if len(chunks) > 1 else chunks[0]
            if any(p.temperature != 1.0 for p in batch):  # each request's rows divided by its own temperature
                temperatures = torch.tensor([p.temperature for p in batch for _ in range(p.size)], dtype=logits.dtype)
                logits = logits / temperatures.unsqueeze(1)
            probabilities = logits.softmax(dim=-1)
            # One top-k and one copy to Python lists for the whole batch; each request keeps its own k.
            top = probabilities.topk(min(max(p.top_k for p in batch), probabilities.shape[1]), dim=1)
            scores, indices = top.values.tolist(), top.indices.tolist()
        except BaseException as exc:  # handed to every waiting request, which re-raises it
            self._resolve(batch, [exc] * len(batch))
            return
        results: list[BatchResult | BaseException] = []
        start = 0
        for p in batch:
            rows = range(start, start + p.size)
            results.append(
                BatchResult(
                    [scores[r][: p.top_k] for r in rows], [indices[r][: p.top_k] for r in rows], total, len(batch)
                )
            )
            start += p.size
        self._resolve(batch, results)

    def _resolve(self, batch: list[_Pending], outcomes: list[BatchResult | BaseException]) -> None:
        """Complete the futures: one wake-up per event loop, not one per request."""
        with self._cond:
            self._answered, self._answered_at = len(batch), time.monotonic()
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, Any]]] = {}
        for p, outcome in zip(batch, outcomes, strict=True):
            by_loop.setdefault(p.loop, []).append((p.future, outcome))
        for loop, pairs in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
                loop.call_soon_threadsafe(_complete, pairs)


class ForwardThreads:
    """The threads that run every served model's forward passes in one API process (`workers` of them, each on
    `threads` torch threads), taking the batcher whose first request has waited longest. One set for all models, not
    threads per model: the math library (MKL) keeps threads for each thread that calls it, and with two models
    served from two threads a single request to either took 11 ms instead of 4.7 (MiniLM-L6, measured in process)."""

    def __init__(self, workers: int = 1, threads: int | None = None) -> None:
        self.workers = workers
        self.threads = threads
        self.cond = threading.Condition()  # shared with every batcher that runs here
        self._ready: list[Batcher] = []  # batchers with requests pending (or being gathered)
        self._alive = 0
        self._closing = False

    @property
    def started(self) -> int:
        """Threads running."""
        with self.cond:
            return self._alive

    def wake(self, batcher: Batcher) -> None:
        """`batcher` has a request pending (called under `cond`)."""
        if batcher not in self._ready:
            self._ready.append(batcher)
        if self._alive == 0:  # started on first use, and again after a close(): no request is stranded
            for n in range(self.workers):
                threading.Thread(target=self._run, name=f"predict-forward-{n}", daemon=True).start()
            self._alive = self.workers
            self._closing = False
        self.cond.notify_all()

    def close(self) -> None:
        """Let the threads exit once nothing is pending (the app stops)."""
        with self.cond:
            self._closing = True
            self.cond.notify_all()

    def _run(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)
        while (work := self._next()) is not None:
            batcher, batch = work
            batcher._execute(batch)

    def _next(self) -> tuple[Batcher, list[_Pending]] | None:
        """The next batch of the batcher whose first request has waited longest; None when closed and idle."""
        with self.cond:
            while not (ready := [b for b in self._ready if b._pending and not b._collecting]):
                if self._closing and not any(b._pending for b in self._ready):
                    self._alive -= 1
                    return None
                self.cond.wait()
            batcher = min(ready, key=lambda b: b._pending[0].queued_at)
            batch = batcher._gather()
            if not batcher._pending and not batcher._collecting:
                self._ready.remove(batcher)  # back at its next request
            return batcher, batch


def _complete(pairs: list[tuple[asyncio.Future, Any]]) -> None:
    for future, outcome in pairs:
        if future.done():  # the request was cancelled (client went away)
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
