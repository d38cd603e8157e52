"""Where a sweep's batches run (``run.run_sweep`` drives them all through one loop): Ray tasks
on the embedded Ray or a cluster (``RayBatches``), worker processes on this machine without
Ray (``PoolBatches``), or this process when one slot would do (``InProcessBatches``). Each is a
``BatchRunner``: submit a batch, wait for one, take its rows, a failure as one line. The Ray
runner is the only code here that imports Ray.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import warnings
from collections.abc import Hashable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol, cast

import torch

from raymeta.allocator import retain_freed_memory
from raymeta.errors import ClusterError, ConfigError, RaymetaError
from raymeta.orchestration.sweep.batch import plan_batches, run_batch
from raymeta.orchestration.sweep.config import SweepConfig
from raymeta.plugins import add_import_roots
from raymeta.results.sink import KeyedRows

Batch = list[dict[str, Any]]
RESUME = "finished units are kept, rerun the same command to resume"
_DIED = "a local worker process died, killed by a signal or out of memory"


class BatchRunner(Protocol):
    """Where a sweep's batches run: Ray tasks (``RayBatches``), worker processes on this
    machine (``PoolBatches``) or this process (``InProcessBatches``). ``_dispatch`` drives all
    three the same way, so buffering, flushing, progress and error lines cannot drift apart."""

    slots: int  # batches submitted at once

    def submit(self, batch: Batch) -> Hashable:
        """Start ``batch``; returns a handle for ``wait_one`` and ``result``."""
        ...

    def wait_one(self, handles: list[Hashable]) -> Hashable:
        """Block until one of ``handles`` is finished (or failed) and return it."""
        ...

    def result(self, handle: Hashable, batch: Batch) -> KeyedRows:
        """The finished batch's rows; a failure is one line (``RaymetaError``)."""
        ...


def batch_keys(batch: Batch) -> str:
    """A batch's units as an error names them."""
    keys = [u["key"] for u in batch]
    return keys[0] if len(keys) == 1 else f"{keys[0]} (one of a batch of {len(keys)})"


def _failure(cause: BaseException, key: str, text: str | None = None) -> RaymetaError:
    """A failed unit as one line: the error's own message, never its traceback. raymeta's own
    errors (bad data, a user plug-in that breaks its contract) keep their message; anything
    else is named by type (or by ``text``) and says that a rerun resumes."""
    if isinstance(cause, RaymetaError):
        return ConfigError(f"sweep unit {key}: {_first_line(cause)}")
    text = text or f"{type(cause).__name__}: {_first_line(cause)}"
    return ClusterError(f"sweep unit {key} failed ({text}); {RESUME}")


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0][:300] if lines else type(exc).__name__


# --- Ray: one Ray task per batch on the embedded Ray or a cluster ---------------------------


def unit_error(exc: BaseException, key: str) -> RaymetaError:
    """A unit failed in a Ray task: the remote error's own line (``_failure``)."""
    import ray

    cause: BaseException = exc
    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = getattr(exc, "cause", None) or exc.as_instanceof_cause()
    if isinstance(cause, ray.exceptions.RayTaskError):
        return _failure(cause, key, _first_line(cause).removeprefix("ray::"))
    return _failure(cause, key)


class RayBatches:
    """Batches as Ray tasks of one CPU each (retried twice on a lost worker), up to the
    cluster's CPU count (or ``max_concurrency``) at once."""

    def __init__(self, cfg: SweepConfig, roots: list[str], max_concurrency: int | None) -> None:
        import ray

        self._ray = ray
        self.slots = max_concurrency or max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._remote = ray.remote(num_cpus=1, max_retries=2)(run_batch_on_worker)
        self._cfg = ray.put(cfg)
        self._roots = roots

    def submit(self, batch: Batch) -> Hashable:
        return cast(Hashable, self._remote.remote(batch, self._cfg, self._roots))

    def wait_one(self, handles: list[Hashable]) -> Hashable:
        ready, _ = self._ray.wait(cast(Any, handles), num_returns=1)
        return cast(Hashable, ready[0])

    def result(self, handle: Hashable, batch: Batch) -> KeyedRows:
        try:
            return cast(KeyedRows, self._ray.get(cast(Any, handle)))
        except self._ray.exceptions.RayError as exc:
            raise unit_error(exc, batch_keys(batch)) from None


# What an embedded Ray's workers import as they start (``ray_runtime.local_init_kwargs``): the
# batches' module, with torch. Measured on the 2-core CPU, an embedded Ray's first two tasks
# that import it: 3.7-3.9 s after ``ray.init`` returned, 2.8-3.2 s preloaded.
PRELOAD = ("torch", "raymeta.orchestration.sweep.backends")


@contextlib.contextmanager
def ray_batches(
    cfg: SweepConfig,
    roots: list[str],
    todo: Batch,
    address: str | None,
    max_concurrency: int | None,
    cap: int,
) -> Iterator[tuple[BatchRunner, list[Batch]]]:
    """Ray up (embedded, joined or already running) for the block, and the batches planned
    for its CPU slots."""
    from raymeta.orchestration.ray_runtime import ray_context

    with ray_context(address, preload=PRELOAD):
        runner = RayBatches(cfg, roots, max_concurrency)
        yield runner, plan_batches(todo, runner.slots, cap)


def run_batch_on_worker(*args: Any, **kwargs: Any) -> Any:
    """``run_batch`` in a Ray worker, which raymeta's tasks own for its life: freed tensors
    stay in the process (``raymeta.allocator``) so each unit's steps do not page-fault."""
    retain_freed_memory()
    return run_batch(*args, **kwargs)


# --- local: worker processes on this machine, no Ray ----------------------------------------

# How local workers start: "fork". Measured on the 2-core CPU with torch and raymeta imported in
# the parent, a pool of 2 running a first batch-sized torch job: fork 0.27 s, forkserver 2.7 s
# (its server imports torch and raymeta once per driver process), spawn 4.5 s (every worker
# imports them); a 180-unit sweep took 1.7 s forked and 2.7 s through a forkserver, best of 3
# each. The start-up is the cost this path exists to remove, and forkserver and spawn also
# re-run the caller's __main__ module in every worker, so a script that calls
# ``raymeta.sweep(..., local=True)`` at top level (as the README's does) fails there.
# Why fork is safe here, and what it takes:
# * torch's GNU OpenMP pool does not survive a fork: a forked child whose parent had run a
#   parallel region hangs forever in its first region of 2+ threads (measured), while 1 thread
#   never touches the pool. Workers set one thread before anything else (``start_local_worker``)
#   and ``run_batch`` sets it again, as PyTorch's DataLoader workers do; a user's model must
#   not raise it inside a sweep worker.
# * the children are forked once, in ``PoolBatches.__init__``, before the progress bar's
#   thread exists.
# * a child holds the parent's descriptors, the output lock's included: ``_die_with`` kills the
#   workers when the driver dies, so a SIGKILLed sweep's lock is free for its rerun.
START_METHOD = "fork"


def local_slots() -> int:
    """The CPUs this process may run on: its affinity mask where the OS has one (so
    ``taskset`` and a container's cpuset are respected), else the machine's CPU count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def start_local_worker(roots: list[str], driver: int) -> None:
    """A local worker's set-up, once per process: one torch thread (a batch is one CPU's
    work, as a Ray task's is), killed with the driver (``_die_with``), freed memory kept
    (``raymeta.allocator``: the process is the sweep's for its life), and the user's module
    directories importable."""
    torch.set_num_threads(1)
    _die_with(driver)
    retain_freed_memory()
    add_import_roots(roots)


def _die_with(driver: int) -> None:
    """Linux: ask the kernel to SIGKILL this process when its parent dies
    (``PR_SET_PDEATHSIG``), so a driver killed with SIGKILL leaves no worker behind to finish
    its batch for nobody. The parent is the driver (fork, spawn) or the forkserver, which
    exits when the driver is gone; a driver that died before the call is caught by the check."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    try:
        os.kill(driver, 0)
    except ProcessLookupError:
        os._exit(1)
    except PermissionError:
        pass


class PoolBatches:
    """Batches in a ``ProcessPoolExecutor`` of ``workers`` processes on this machine."""

    def __init__(self, cfg: SweepConfig, roots: list[str], workers: int) -> None:
        # one batch queued per worker beside the one it runs: a worker that finishes takes the
        # next at once, also while the driver is writing a part (measured on the loaded 2-core
        # CPU: both workers idled ~1 s per write when only the running batches were submitted)
        self.slots = 2 * workers
        self._cfg, self._roots = cfg, roots
        self._pool = ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context(START_METHOD),
            initializer=start_local_worker,
            initargs=(roots, os.getpid()),
        )
        try:
            with warnings.catch_warnings():
                # Python >= 3.12 warns when a process with threads forks (torch's OpenMP pool
                # is threads): the workers never use what those threads held, see START_METHOD
                warnings.filterwarnings(
                    "ignore", "This process .* is multi-threaded", DeprecationWarning
                )
                self._pool.submit(os.getpid).result()  # a fork pool forks every worker at once
        except BrokenProcessPool:
            self._pool.shutdown(wait=True, cancel_futures=True)
            raise ClusterError(
                f"sweep: {workers} local worker processes could not start (one died at once); "
                "try --max-concurrency 1, which runs the sweep in this process"
            ) from None

    def submit(self, batch: Batch) -> Hashable:
        try:
            return self._pool.submit(run_batch, batch, self._cfg, self._roots)
        except BrokenProcessPool:  # a worker died since the last batch was handed out
            raise _failure(RuntimeError(), batch_keys(batch), _DIED) from None

    def wait_one(self, handles: list[Hashable]) -> Hashable:
        futures = cast("list[Future[KeyedRows]]", handles)
        done, _ = wait(futures, return_when=FIRST_COMPLETED)
        # a finished batch before a failed one: a worker that dies breaks the pool and fails
        # every pending batch at once, and the rows that reached the driver are kept
        done_ok = [f for f in futures if f in done and f.exception() is None]
        return done_ok[0] if done_ok else next(f for f in futures if f in done)

    def result(self, handle: Hashable, batch: Batch) -> KeyedRows:
        try:
            return cast("Future[KeyedRows]", handle).result()
        except BrokenProcessPool:
            raise _failure(RuntimeError(), batch_keys(batch), _DIED) from None
        except Exception as exc:
            raise _failure(exc, batch_keys(batch)) from None

    def close(self, clean: bool) -> None:
        """Shut the pool down; after an error or Ctrl-C the workers are killed first, so the
        command ends now rather than once their batches (whose rows nobody keeps) finish."""
        if not clean:
            stop = getattr(self._pool, "terminate_workers", None)  # Python >= 3.14
            if stop is not None:
                stop()
            else:  # the executor's own table of its worker processes (3.10-3.13)
                for proc in list((getattr(self._pool, "_processes", None) or {}).values()):
                    proc.kill()
        self._pool.shutdown(wait=True, cancel_futures=True)


class InProcessBatches:
    """Batches one after another in this process: one slot needs no worker process. Restores
    the caller's torch thread count (``run_batch`` trains on one thread)."""

    slots = 1

    def __init__(self, cfg: SweepConfig, roots: list[str]) -> None:
        self._cfg, self._roots = cfg, roots
        self._n = 0

    def submit(self, batch: Batch) -> Hashable:
        self._n += 1
        return self._n

    def wait_one(self, handles: list[Hashable]) -> Hashable:
        return handles[0]

    def result(self, handle: Hashable, batch: Batch) -> KeyedRows:
        threads = torch.get_num_threads()
        try:
            return run_batch(batch, self._cfg, self._roots)
        except Exception as exc:
            raise _failure(exc, batch_keys(batch)) from None
        finally:
            torch.set_num_threads(threads)


@contextlib.contextmanager
def local_batches(
    cfg: SweepConfig,
    roots: list[str],
    todo: Batch,
    max_concurrency: int | None,
    cap: int,
) -> Iterator[tuple[BatchRunner, list[Batch]]]:
    """The batches planned for ``max_concurrency`` (default: this process's CPUs) slots, as
    the Ray path plans them for as many CPUs, so both run the same batches; no more workers
    than batches, and none when one would do."""
    slots = max_concurrency or local_slots()
    queue = plan_batches(todo, slots, cap)
    workers = min(slots, len(queue))
    if workers == 1:
        yield InProcessBatches(cfg, roots), queue
        return
    pool = PoolBatches(cfg, roots, workers)
    clean = False
    try:
        yield pool, queue
        clean = True
    finally:
        pool.close(clean)
