"""Where batches run: in this process (``local``, the default), in worker processes on this
machine (``processes``: one per core) or on a Ray cluster (``ray``).

The unit of work is one :class:`BatchTask`: one batch of samples of one cell. :func:`run_task`
is a pure function of the task (the defense is rebuilt from its zoo entry, randomness comes from
seeds in the task), so a batch gives the same rows whichever process or machine runs it. The
executor only moves tasks out and results back; the runner alone writes the store, so SQLite
keeps one writer and a crash loses at most the batches in flight.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

import torch

from robustgen_bench.attacks.spec import AttackSpec
from robustgen_bench.attacks.verification import majority_vote, predict_draws
from robustgen_bench.device import fork_rng
from robustgen_bench.errors import RuntimeFailure, UserInputError
from robustgen_bench.store import ResultRow


class ExecutorKind(str, Enum):
    """The executors ``rgbench run --executor`` accepts."""

    LOCAL = "local"
    PROCESSES = "processes"
    RAY = "ray"


@dataclass(frozen=True)
class BatchTask:
    """One batch of one cell.

    ``x`` (B, C, H, W) in [0, 1], ``y`` (B,) labels, ``indices`` the B dataset indices,
    ``clean_pred`` (B,) the stored clean predictions (None for the clean cell itself).
    ``entry_fingerprint`` is the zoo entry as the driver saw it (:meth:`ZooEntry.fingerprint`):
    a worker whose zoo differs refuses the task instead of silently evaluating another model.
    """

    cell_key: str
    label: str
    model: str
    entry_fingerprint: str
    attack: AttackSpec | None
    x: torch.Tensor
    y: torch.Tensor
    indices: tuple[int, ...]
    clean_pred: torch.Tensor | None
    clean_seed: int
    verify_draws: int
    keep_adv: bool
    #: Where the batch runs ("cpu", "cuda", "cuda:1"); rows come back on the CPU.
    device: str = "cpu"


@dataclass(frozen=True)
class BatchResult:
    """What a worker sends back: one row per sample, the compute time and (if asked) x_adv (B, ...)."""

    task: BatchTask
    rows: list[ResultRow]
    seconds: float
    x_adv: torch.Tensor | None
    #: Silent-failure counters of the attack on this batch (:attr:`Attack.last_counters`).
    counters: dict[str, int] | None = None


# One defense per worker process, rebuilt only when the model changes (tasks arrive grouped by
# model); ABS-family defenses cache decoded candidates, so rebuilding per batch would be costly.
_CACHE: dict[str, tuple[str, Any, Any]] = {}


def _defense(model: str, fingerprint: str, device: str = "cpu") -> tuple[Any, Any]:
    from robustgen_bench.zoo import build_defense, get_entry

    hit = _CACHE.get(model)
    if hit is not None and hit[0] == f"{fingerprint}@{device}":
        return hit[1], hit[2]
    entry = get_entry(model)
    if entry.fingerprint() != fingerprint:
        raise RuntimeFailure(f"{model}: this worker's zoo entry ({entry.entry_file}) differs from "
                             "the one the run was planned with (weights, config or adaptive "
                             "hook); every node needs the same model_zoo/")
    defense = build_defense(entry).to(torch.device(device))
    _CACHE.clear()
    _CACHE[model] = (f"{fingerprint}@{device}", defense, entry.adaptive)
    return defense, entry.adaptive


def run_task(task: BatchTask) -> BatchResult:
    """Run one batch: clean predictions, or one attack with its invariants; returns the rows."""
    from robustgen_bench.attacks import make_attack

    device = torch.device(task.device)
    defense, adaptive = _defense(task.model, task.entry_fingerprint, task.device)
    x, y = task.x.to(device), task.y.to(device)
    t0 = time.perf_counter()
    if task.attack is None:
        with fork_rng(device):
            torch.manual_seed(task.clean_seed)
            n_draws = task.verify_draws if adaptive.randomized else 1
            draws = predict_draws(defense, x, n_draws)
        # Same verdict rule as attacks: majority of draws, ties to the true label.
        pred = majority_vote(draws, task.y)
        rows = [ResultRow(sample_index=i, label=int(task.y[j]), clean_pred=int(pred[j]),
                          adv_pred=int(pred[j]), adv_correct=bool(pred[j] == task.y[j]),
                          distance=None, draws=tuple(int(d) for d in draws[:, j]))
                for j, i in enumerate(task.indices)]
        return BatchResult(task, rows, time.perf_counter() - t0, None)
    assert task.clean_pred is not None
    attack = make_attack(task.attack)
    # The attack seeds itself from its seed and the batch's sample indices, so the batch sees the
    # same randomness in any process and after any resume.
    rows = attack(defense, adaptive, x, y, list(task.indices), task.clean_pred.to(device))
    x_adv = attack.last_x_adv if task.keep_adv else None
    counters = dict(getattr(attack, "last_counters", None) or {}) or None
    return BatchResult(task, rows, time.perf_counter() - t0, x_adv, counters)


class Executor(Protocol):
    """Runs tasks and yields their results in completion order (not necessarily task order)."""

    def map(self, tasks: Iterable[BatchTask]) -> Iterator[BatchResult]: ...

    def close(self, *, interrupted: bool = False) -> None: ...


def _bounded_stream(tasks: Iterable[BatchTask], in_flight: int, submit: Callable[[BatchTask], Any],
                    wait_some: Callable[[list[Any]], tuple[list[BatchResult], list[Any]]],
                    cancel: Callable[[Any], Any]) -> Iterator[BatchResult]:
    """Keep at most ``in_flight`` submitted tasks and yield results as they complete (the pool
    executors' common loop). ``wait_some(pending)`` blocks until at least one finishes and returns
    its results and the rest; on an error, or a caller that stops early (Ctrl-C), the batches still
    pending are cancelled: nobody would store their results."""
    it = iter(tasks)
    pending: list[Any] = []
    exhausted = False
    try:
        while True:
            while not exhausted and len(pending) < in_flight:
                t = next(it, None)
                if t is None:
                    exhausted = True
                else:
                    pending.append(submit(t))
            if not pending:
                return
            done, pending = wait_some(pending)
            yield from done
    finally:
        for p in pending:
            cancel(p)


class LocalExecutor:
    """Runs each task in this process when the runner asks for its result (lazy, in order)."""

    def map(self, tasks: Iterable[BatchTask]) -> Iterator[BatchResult]:
        for t in tasks:
            yield run_task(t)

    def close(self, *, interrupted: bool = False) -> None:
        pass

    def __repr__(self) -> str:
        return "LocalExecutor()"


def _init_process_worker() -> None:
    # One thread per worker: the workers already occupy the cores, and the small per-batch
    # operations of these models gain little from intra-op threads.
    torch.set_num_threads(1)


def stop_pool(pool: Any) -> None:
    """Shut a ``concurrent.futures.ProcessPoolExecutor`` down without waiting for its running
    tasks: cancel the queued ones and terminate the workers (after Ctrl-C, whose results nobody
    will store)."""
    terminate = getattr(pool, "terminate_workers", None)  # Python >= 3.14
    if terminate is not None:
        terminate()  # shuts the pool down too (cancelling the queued tasks)
        return
    # earlier Pythons have no public handle; the table must be read before shutdown clears it
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.join(timeout=10)


class ProcessExecutor:
    """Runs tasks in ``workers`` processes on this machine (default: one per core).

    The single-machine counterpart of :class:`RayExecutor`, without its dependency: workers are
    spawned (a fresh interpreter that inherits the environment, so ``RGBENCH_*`` find the same
    zoo, data and weights), each keeps its last defense (:func:`_defense`), and at most
    ``in_flight`` tasks (default: twice the workers) are submitted at a time. Results come back in
    completion order; an error in a worker is re-raised here with its type.
    """

    def __init__(self, workers: int | None = None, in_flight: int | None = None) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.workers = workers or os.cpu_count() or 1
        if self.workers < 1:
            raise UserInputError(f"expected at least 1 worker, got {self.workers}", key="--workers")
        self.in_flight = in_flight or 2 * self.workers
        self._pool = ProcessPoolExecutor(max_workers=self.workers,
                                         mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_init_process_worker)

    def map(self, tasks: Iterable[BatchTask]) -> Iterator[BatchResult]:
        from concurrent.futures import FIRST_COMPLETED, wait

        def wait_some(pending: list[Any]) -> tuple[list[BatchResult], list[Any]]:
            done, rest = wait(pending, return_when=FIRST_COMPLETED)
            return [f.result() for f in done], list(rest)

        return _bounded_stream(tasks, self.in_flight, lambda t: self._pool.submit(run_task, t),
                               wait_some, lambda f: f.cancel())

    def close(self, *, interrupted: bool = False) -> None:
        """Shut the pool down. ``interrupted`` (Ctrl-C) ends the batches still running at once:
        their rows were never stored, so the next run computes them again and nothing is lost,
        while waiting would cost a whole batch (up to an hour of an E-ABS noise search). A worker
        hit by the same Ctrl-C would otherwise only fail its current batch and start the next one
        already queued for it."""
        if interrupted:
            stop_pool(self._pool)
            return
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __repr__(self) -> str:
        return f"ProcessExecutor(workers={self.workers})"


# Variables a worker needs to find the same zoo, reference weights and data as the driver.
_FORWARDED_ENV = ("RGBENCH_ZOO", "RGBENCH_WEIGHTS", "RGBENCH_DATA", "RGBENCH_NO_DOWNLOAD",
                  "GIT_PYTHON_REFRESH")


class RayExecutor:
    """Runs tasks as Ray tasks (one CPU each) on a cluster or on a local Ray instance.

    ``address=None`` starts a local instance with ``num_cpus`` workers (default: all cores);
    ``"auto"`` or ``"ray://host:10001"`` joins a running cluster, whose nodes need this package
    and the same ``model_zoo/`` installed. At most ``in_flight`` tasks (default: twice the
    cluster's CPUs) are submitted at a time, so progress reflects what is really running and a
    crash of the driver loses little work.
    """

    def __init__(self, address: str | None = None, num_cpus: int | None = None,
                 in_flight: int | None = None, gpu_fraction: float = 0.25) -> None:
        try:
            import ray
        except ModuleNotFoundError as e:
            raise UserInputError("the ray executor needs Ray: pip install 'robustgen-bench[ray]'",
                                 key="--executor") from e
        self._ray = ray
        self.address, self.num_cpus = address, num_cpus
        self._owns = not ray.is_initialized()
        if self._owns:
            env = {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ}
            env.setdefault("OMP_NUM_THREADS", "1")
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True,
                                      "runtime_env": {"env_vars": env}}
            if address is None:
                kwargs["num_cpus"] = num_cpus or os.cpu_count() or 1
            ray.init(address=address, **kwargs)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.in_flight = in_flight or 2 * cpus
        self._remote = ray.remote(num_cpus=1, max_retries=0)(_ray_run_task)
        # Batches for a CUDA device ask Ray for a GPU (a fraction, so that several share one).
        self._remote_gpu = ray.remote(num_cpus=1, num_gpus=gpu_fraction, max_retries=0)(
            _ray_run_task)

    def map(self, tasks: Iterable[BatchTask]) -> Iterator[BatchResult]:
        ray = self._ray

        def submit(t: BatchTask) -> Any:
            # a Ray worker picks its own GPU: "cuda" (no index) on the worker
            return (self._remote_gpu if t.device.startswith("cuda") else self._remote).remote(t)

        def wait_some(pending: list[Any]) -> tuple[list[BatchResult], list[Any]]:
            ready, rest = ray.wait(pending, num_returns=1)
            try:
                return [ray.get(ready[0])], rest
            except ray.exceptions.RayTaskError as e:
                cause = getattr(e, "cause", None)
                raise (cause if isinstance(cause, BaseException) else e) from None

        return _bounded_stream(tasks, self.in_flight, submit, wait_some, ray.cancel)

    def close(self, *, interrupted: bool = False) -> None:
        # the pending tasks were already cancelled by the stream; shutting down a Ray this
        # executor started ends its workers either way
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()

    def __repr__(self) -> str:
        return f"RayExecutor(address={self.address!r}, num_cpus={self.num_cpus!r})"


def _ray_run_task(task: BatchTask) -> BatchResult:
    torch.set_num_threads(1)
    return run_task(task)


def make_executor(kind: ExecutorKind | str = ExecutorKind.LOCAL, *, address: str | None = None,
                  num_cpus: int | None = None) -> LocalExecutor | ProcessExecutor | RayExecutor:
    """The executor named ``kind`` (``local``, ``processes`` or ``ray``); ``num_cpus``: the
    worker processes, or the CPUs of a Ray instance started here (default: all cores)."""
    try:
        kind = ExecutorKind(kind)
    except ValueError:
        raise UserInputError(f"unknown executor {kind!r}; expected one of "
                             f"{[k.value for k in ExecutorKind]}", key="--executor") from None
    if kind is ExecutorKind.LOCAL:
        return LocalExecutor()
    if kind is ExecutorKind.PROCESSES:
        return ProcessExecutor(workers=num_cpus)
    return RayExecutor(address=address, num_cpus=num_cpus)


__all__ = ["BatchTask", "BatchResult", "Executor", "ExecutorKind", "LocalExecutor", "ProcessExecutor",
           "RayExecutor", "make_executor", "run_task", "stop_pool"]
