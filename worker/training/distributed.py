"""Data-parallel training across the devices of one worker (`resources.gpus` > 1): torch.distributed, NCCL on GPUs,
gloo on CPU.

Rank 0 is the worker process itself: it runs the job as it would on one device (database, events, checkpoints,
evaluations, the report) and trains its share of every batch. Ranks 1..N-1 are spawned processes that only compute:
each builds the same run from the same spec, takes rank 0's state when rank 0 is ready (weights and buffers through a
broadcast; optimizer, scheduler and progress through one object broadcast, so a resumed job resumes on every rank),
trains its shares, and at every step boundary follows rank 0's word: go on or stop early. Rank 0 alone evaluates; the
others wait for its word meanwhile. When rank 0 stops otherwise (cancelled, handed back, lease lost, failed), it ends
the others: they hold nothing that is not in its checkpoints.

How a batch is split: the global batch is the job's batch_size (a multiple of the devices, checked at submit), in
the seeded order single-device training uses; rank r takes its rows r, r+N, r+2N... Every shard is thus a function of
(seed, epoch, batch) alone, and a resume replays it. Each rank divides its summed loss by the whole batch's
normalizer over N, so the ranks' average gradient is exactly the single-device gradient of the whole batch (class
weights, label smoothing and short last batches included). A last batch with fewer rows than devices hands the ranks without
a row of their own one row labelled -100 (cross-entropy ignores it), so that every rank takes part in every allreduce.
Dropout draws from a generator seeded by (seed, step, rank) at each step, so a resume replays it on every rank.

Why not DistributedDataParallel's hooks: DDP averages gradients inside the backward pass, so a rank that runs out of
GPU memory mid-pass leaves the others waiting in an allreduce it never joins. Here no collective runs during the
passes: after its micro-batches each rank says whether it ran out of memory (one small allreduce), and either all
ranks halve their micro-batch and redo the step together or all average their gradients (bucketed allreduces). The
price is DDP's overlap of the gradient exchange with the backward pass.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from app.config import Settings, get_settings
from app.jobs.schemas import Hyperparameters
from app.jobs.stop_reasons import JobFailed
from app.tasktypes.common import Preprocessing
from app.tasktypes.specs import TaskSpec
from worker.training.augment import Augment
from worker.training.data import SplitData
from worker.training.loop import Run, RunHooks, fit
from worker.training.loss import normalizer
from worker.training.state import FitState

log = logging.getLogger(__name__)

IGNORED = -100  # cross-entropy's ignore_index: the label of a stand-in row that must not count
GO, STOP_EARLY = 0, 1  # rank 0's word at a step boundary
TIMEOUT = timedelta(minutes=30)  # how long a rank waits in a collective (for rank 0's evaluations and checkpoints)
SETUP_TIMEOUT = timedelta(days=1)  # how long the other ranks wait for rank 0's setup (baselines, resume): they die
# with rank 0 in any case
JOIN_SECONDS = 60  # how long rank 0 waits for the others to exit after the last step
BUCKET_BYTES = 25 * 2**20  # gradients are averaged in flat buckets of about this size (DDP's default bucket)


@dataclass(frozen=True)
class RunRecipe:
    """What every rank builds its run from (setup.build_run's arguments but the device); crosses to spawned ranks."""

    task: str
    base_path: Path
    labels: list[str]
    records: list[dict]
    hp: Hyperparameters
    data_budget_bytes: int | None


class DataParallel:
    """One rank's part in a data-parallel run: its shard of each batch and the collectives."""

    def __init__(self, rank: int, world: int, run: Run) -> None:
        self.rank, self.world, self.seed = rank, world, run.hp.seed
        self.device = run.device
        if run.device.type == "cuda" and run.device.index is None:  # rank 0's "cuda": the current device
            self.device = torch.device("cuda", torch.cuda.current_device())
        # Every rank starts from rank 0's weights and buffers. Buffers are not synced after that: BatchNorm's running
        # statistics, which only evaluation reads, are rank 0's.
        with torch.no_grad():
            for tensor in run.model.state_dict().values():
                dist.broadcast(tensor, src=0)

    @property
    def leads(self) -> bool:
        return self.rank == 0

    def batches(
        self,
        data: SplitData,
        spec: TaskSpec,
        processor: Any,
        prep: Preprocessing,
        batch_size: int,
        order: torch.Tensor | None = None,
        start: int = 0,
        augment: Augment | None = None,
    ) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        """data.batches for this rank: its rows of each global batch. Augmentation draws per row of the whole batch,
        so an augmented batch is drawn whole and then cut, as one device would see it."""
        indices = order if order is not None else torch.arange(len(data))
        for number, begin in enumerate(range(start * batch_size, len(data), batch_size), start=start):
            batch = indices[begin : begin + batch_size].tolist()
            rows = list(range(self.rank, len(batch), self.world)) or [0]
            mine = [batch[i] for i in rows]
            if augment is None:
                selected = spec.select(data.encoded, mine)
            else:
                selected = augment(spec.select(data.encoded, batch), number)[rows]
            labels = data.labels[mine]
            if self.rank >= len(batch):  # a stand-in row: computed, counted nowhere
                labels = torch.full_like(labels, IGNORED)
            yield spec.collate(processor, prep, selected), labels

    def normalizer(self, labels: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        """The whole batch's normalizer over the world size: the ranks' gradients are averaged, and the average of
        (summed loss of shard r) / (whole normalizer / N) is the whole batch's mean loss."""
        total = normalizer(labels[labels != IGNORED], weights).to(torch.float32).clone()
        dist.all_reduce(total)
        return total / self.world

    def ranks_out_of_memory(self, mine: bool) -> list[int]:
        """Which ranks ran out of memory in this step's passes (every rank learns the same list)."""
        flags = torch.zeros(self.world, dtype=torch.int64, device=self.device)
        flags[self.rank] = int(mine)
        dist.all_reduce(flags)
        return [rank for rank, flag in enumerate(flags.tolist()) if flag]

    def average_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        """Each gradient becomes the ranks' mean, exchanged in flat buckets. Parameters without a gradient (a pooler
        no head reads) have none on every rank, as they would have on one device."""
        grads = [p.grad for p in parameters if p.grad is not None]
        for bucket in _buckets(grads):
            flat = torch.cat([g.reshape(-1) for g in bucket])
            dist.all_reduce(flat)
            flat /= self.world
            offset = 0
            for grad in bucket:
                grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
                offset += grad.numel()

    def whole_batch(self, loss: float, labels: torch.Tensor) -> tuple[float, int]:
        """The whole batch's mean training loss and its row count, from this rank's share."""
        mine = torch.tensor([loss, float((labels != IGNORED).sum())], dtype=torch.float64, device=self.device)
        dist.all_reduce(mine)
        return float(mine[0]) / self.world, int(mine[1])

    def step_boundary(self, run: Run, word: int) -> int:
        """Rank 0's word reaches every rank; then each seeds its dropout for the next step."""
        said = torch.tensor([word], dtype=torch.int64, device=self.device)
        dist.broadcast(said, src=0)
        self.seed_step(run.state.step)
        return int(said[0])

    def seed_step(self, step: int) -> None:
        torch.manual_seed(((self.seed * 1_000_003 + step) * 1_000_003 + self.rank) % 2**63)


def _buckets(grads: list[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
    """Consecutive gradients of one dtype, about BUCKET_BYTES at a time."""
    bucket: list[torch.Tensor] = []
    size = 0
    for grad in grads:
        if bucket and (size + grad.numel() * grad.element_size() > BUCKET_BYTES or grad.dtype != bucket[0].dtype):
            yield bucket
            bucket, size = [], 0
        bucket.append(grad)
        size += grad.numel() * grad.element_size()
    if bucket:
        yield bucket


class LeaderHooks:
    """Rank 0's hooks: the job's own, and after each step the word the other ranks follow."""

    def __init__(self, hooks: RunHooks, parallel: DataParallel) -> None:
        self.hooks, self.parallel = hooks, parallel

    def log_step(self, step: int, epoch: float, loss: float, lr: float, samples_per_s: float) -> None:
        self.hooks.log_step(step, epoch, loss, lr, samples_per_s)

    def log_eval(self, step: int, epoch: float, values: dict[str, float]) -> None:
        self.hooks.log_eval(step, epoch, values)

    def save_checkpoint(self, run: Run, metric_name: str | None, value: float | None, is_best: bool) -> None:
        self.hooks.save_checkpoint(run, metric_name, value, is_best)

    def event(self, kind: str, message: str) -> None:
        self.hooks.event(kind, message)

    def at_step_boundary(self, run: Run) -> None:
        self.hooks.at_step_boundary(run)  # may raise: then ranks_for ends the other ranks
        self.parallel.step_boundary(run, STOP_EARLY if run.state.stopped_early else GO)


class FollowerHooks:
    """The other ranks' hooks: nothing to report; at each step boundary, rank 0's word."""

    def __init__(self, parallel: DataParallel) -> None:
        self.parallel = parallel

    def log_step(self, step: int, epoch: float, loss: float, lr: float, samples_per_s: float) -> None:
        pass

    def log_eval(self, step: int, epoch: float, values: dict[str, float]) -> None:
        pass

    def save_checkpoint(self, run: Run, metric_name: str | None, value: float | None, is_best: bool) -> None:
        pass

    def event(self, kind: str, message: str) -> None:
        pass

    def at_step_boundary(self, run: Run) -> None:
        run.state.stopped_early = self.parallel.step_boundary(run, GO) == STOP_EARLY


class Ranks:
    """Rank 0's handle on a data-parallel run: the spawned ranks and the process group they join."""

    def __init__(self, world: int, device: torch.device, recipe: RunRecipe, threads: int) -> None:
        self.world, self.device = world, device
        self.backend = "nccl" if device.type == "cuda" else "gloo"
        self.store = dist.TCPStore("127.0.0.1", 0, world, is_master=True, timeout=TIMEOUT, wait_for_workers=False)
        args = (world, self.store.port, device.type, recipe, threads, os.getpid())
        self.spawned = mp.start_processes(_follow, args, nprocs=world - 1, join=False, daemon=True)

    def lead(self, run: Run, hooks: RunHooks) -> RunHooks:
        """Join the other ranks (once each has built its run) and give them this run's state: the hooks fit() takes
        on rank 0."""
        self._wait_until_built()
        self.store.set("leading", "1")
        dist.init_process_group(self.backend, store=self.store, rank=0, world_size=self.world, timeout=TIMEOUT)
        state = [run.optimizer.state_dict(), run.scheduler.state_dict(), asdict(run.state)]
        dist.broadcast_object_list(state, src=0, device=self._collective_device())
        parallel = run.parallel = DataParallel(0, self.world, run)
        parallel.seed_step(run.state.step)
        return LeaderHooks(hooks, parallel)

    def finish(self, completed: bool) -> None:
        """After the last step the others exit by themselves; when rank 0 stopped otherwise they are ended."""
        if completed:
            deadline = time.monotonic() + JOIN_SECONDS
            with contextlib.suppress(mp.ProcessRaisedException, mp.ProcessExitedException):
                while not self.spawned.join(timeout=1) and time.monotonic() < deadline:
                    pass
        for process in self.spawned.processes:
            if process.is_alive():
                process.kill()
            process.join()
        if dist.is_initialized():
            dist.destroy_process_group()

    def _wait_until_built(self) -> None:
        """Wait until every rank has built its run; a rank that died meanwhile fails the job with its error."""
        ready = [f"built/{rank}" for rank in range(1, self.world)]
        deadline = time.monotonic() + TIMEOUT.total_seconds()
        while not self.store.check(ready):
            for rank, process in enumerate(self.spawned.processes, start=1):
                if process.exitcode is not None:
                    raise JobFailed(f"rank {rank} of {self.world} could not start: {self._error_of(rank)}")
            if time.monotonic() > deadline:
                raise JobFailed(f"the other ranks did not build their runs within {TIMEOUT}")
            time.sleep(0.1)

    def _error_of(self, rank: int) -> str:
        """The last line of a spawned rank's traceback (torch.multiprocessing writes it to a file)."""
        with contextlib.suppress(OSError, IndexError):
            lines = Path(self.spawned.error_files[rank - 1]).read_text().strip().splitlines()
            return lines[-1]
        return f"it exited with code {self.spawned.processes[rank - 1].exitcode}"

    def _collective_device(self) -> torch.device | None:
        return self.device if self.backend == "nccl" else None


@contextlib.contextmanager
def ranks_for(world: int, device: torch.device, recipe: RunRecipe) -> Iterator[Ranks | None]:
    """The other ranks of a `world`-device job, spawned now so they build their runs while rank 0 builds its own;
    None for one device. The cores are shared out among the ranks for the run."""
    if world == 1:
        yield None
        return
    if device.type == "cuda" and torch.cuda.device_count() < world:
        raise JobFailed(
            f"the job asks for {world} devices but this worker sees {torch.cuda.device_count()} GPU(s); "
            "start it with --gpus no higher than its GPUs"
        )
    threads = torch.get_num_threads()
    share = max(1, threads // world)
    torch.set_num_threads(share)
    try:
        ranks = Ranks(world, device, recipe, share)
        completed = False
        try:
            yield ranks
            completed = True
        finally:
            ranks.finish(completed)
    finally:
        torch.set_num_threads(threads)


def _follow(index: int, world: int, port: int, kind: str, recipe: RunRecipe, threads: int, parent: int) -> None:
    """A spawned rank (1..world-1): build the run, take rank 0's state, train its shares to the last step or rank 0's
    word to stop early (rank 0 ends it when the run stops otherwise)."""
    _die_with(parent)
    rank = index + 1
    torch.set_num_threads(threads)
    device = torch.device("cuda", rank) if kind == "cuda" else torch.device("cpu")
    if kind == "cuda":
        torch.cuda.set_device(device)
    from worker.training.setup import build_run

    r = recipe
    run, _ = build_run(r.task, r.base_path, r.labels, r.records, r.hp, device, r.data_budget_bytes)
    run.oom_at_step = injected_oom_step(get_settings(), rank)
    del recipe, r
    store = dist.TCPStore("127.0.0.1", port, world, is_master=False, timeout=TIMEOUT)
    store.set(f"built/{rank}", "1")
    store.wait(["leading"], SETUP_TIMEOUT)
    dist.init_process_group("nccl" if kind == "cuda" else "gloo", store=store, rank=rank, world_size=world,
                            timeout=TIMEOUT)  # fmt: skip
    try:
        state: list[Any] = [None, None, None]
        dist.broadcast_object_list(state, src=0, device=device if kind == "cuda" else None)
        run.optimizer.load_state_dict(state[0])
        run.scheduler.load_state_dict(state[1])
        run.state = FitState(**state[2])
        parallel = run.parallel = DataParallel(rank, world, run)
        parallel.seed_step(run.state.step)
        fit(run, FollowerHooks(parallel))
    finally:
        dist.destroy_process_group()


def injected_oom_step(settings: Settings, rank: int) -> int | None:
    """The step at which this rank raises a CUDA out-of-memory error (tests only), or None."""
    return settings.test_oom_at_step if settings.test_oom_rank == rank else None


def _die_with(parent: int) -> None:
    """A spawned rank ends with the worker that spawned it (SIGKILL included) and ignores the signals meant for
    the worker (a terminal's Ctrl-C, a SIGTERM to the process group): rank 0 tells it when to stop."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before the line above
        os._exit(1)
