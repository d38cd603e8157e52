"""``raymeta sweep``: many held-out tasks x strategies x seeds, as Ray tasks or, with
``local=True``, as worker processes on this machine without Ray.

Units (meta-checkpoint, strategy, task, seed) of one checkpoint and strategy run in batches:
one batch trains its units as one packed, vmapped population per model
(``batch.run_batch``), each unit with its own task data, seeds and PBT, so its rows are the
ones it gets alone (``run_unit``); up to the cluster's CPU count (local: this process's CPUs)
of batches run at once. The driver buffers finished batches and appends them to the results
dataset (once at least ``flush_units`` units or ``flush_s`` seconds since the last write, and at
the end), one part file per write listing its units' keys: whole batches only, a few files per
sweep. Appends are atomic and idempotent, so a killed sweep rerun with the same command skips
the published units, re-runs the buffered ones and leaves no duplicate or missing rows.

Ray and local runs share one dispatch loop (``_dispatch``) over a small ``BatchRunner``
(submit a batch, wait for one, take its rows): the Ray runner is the only code here that
imports Ray. Why a local path at all: on a small machine Ray's start, its workers' first
imports and its shutdown (3-6 s on 2 cores) cost more than a 200-task sweep's fine-tuning.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import time
import warnings
from collections.abc import Hashable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Protocol, cast

import torch

from raymeta import checks
from raymeta.allocator import retain_freed_memory
from raymeta.errors import ClusterError, ConfigError, DataError, RaymetaError
from raymeta.finetune.run import run_strategy
from raymeta.finetune.strategy import AUTO, Strategy, resolve_auto
from raymeta.lock import locks_output
from raymeta.orchestration.sweep.batch import (
    cached_checkpoint,
    plan_batches,
    plan_unit,
    run_batch,
    unit_rows,
)
from raymeta.orchestration.sweep.config import SweepConfig
from raymeta.paths import check_outside_artifacts
from raymeta.plugins import add_import_roots, check_portable, import_roots
from raymeta.priors import load_priors
from raymeta.progress import Progress
from raymeta.results import ResultSink
from raymeta.tasks import make_family, resize_splits


def run_unit(
    unit: dict[str, Any], cfg: SweepConfig, import_roots: list[str] | None = None
) -> list[dict[str, Any]]:
    """Run one (meta, strategy, task, seed) unit alone and return its result rows (pure, no
    Ray): the reference ``run_batch`` reproduces, and what ``raymeta tune``-style callers use.

    ``import_roots``: where the driver found the user's model and family modules, if any."""
    add_import_roots(import_roots or [])
    torch.set_num_threads(1)
    plan = plan_unit(unit, cfg)
    res = run_strategy(
        plan.ckpt,
        plan.strategy,
        plan.task,
        population=cfg.population,
        steps=plan.steps,
        interval=cfg.interval,
        seed=plan.seed,
        rng=plan.rng(),
    )
    return unit_rows(unit, cfg, plan, res)


MAX_CONCURRENCY = 4096
FLUSH_UNITS = 256  # finished units per results part, and the most units of one Ray task
FLUSH_S = 60.0  # ... or seconds since the last write, so a slow sweep persists its progress


def check_sweep(cfg: SweepConfig) -> list[str]:
    """Everything a unit would find wrong, found in the driver before any Ray task or file;
    returns the import roots of the checkpoints' user modules (see ``raymeta.plugins``).

    Loads each meta-checkpoint (and its priors when a strategy needs them), builds its family
    with the sweep's task_options, checks every task index against a finite family's held-out
    tasks, and builds the first held-out task, so split sizes the data cannot meet fail here.
    """
    names: list[tuple[str, str]] = []
    for meta in dict.fromkeys(str(m) for m in cfg.meta):
        ckpt = cached_checkpoint(meta)
        names += [("family", ckpt.family.name)]
        names += [("model", c.spec.name) for c in ckpt.candidates.values()]
        strategies = [
            resolve_auto(ckpt)[0] if s == AUTO else Strategy.parse(s) for s in cfg.strategies
        ]
        if any(s.prior == "learned" for s in strategies):
            load_priors(ckpt)
        family = make_family(
            resize_splits(ckpt.family, cfg.task_options, "sweep: task_options key")
        )
        n_tasks = getattr(family, "n_tasks", None)
        if callable(n_tasks):
            have = int(n_tasks("test"))
            bad = [t for t in cfg.tasks if t >= have]
            if bad:
                raise ConfigError(
                    f"sweep: task index {bad[0]} out of range: {meta} has {have} held-out (meta-split test) tasks"
                )
        family.task("test", min(cfg.tasks))
    for kind, name in names:
        check_portable(kind, name)  # type: ignore[arg-type]
    return import_roots(name for _, name in names)


def check_results_dir(out: Path, label: str = "sweep output") -> None:
    """A results dataset of its own: never inside a meta-checkpoint (its parts would sit among
    the checkpoint's files; ``meta-train --out`` refuses the same) nor a ``raymeta tune`` run
    directory (whose own results live in RUN/results). Checked before the output lock, which
    would otherwise leave its file there first."""
    check_outside_artifacts(out, label, kinds=("meta-checkpoint", "tune run"))


def _check_call(cfg: Any, out: Any, address: Any, progress: Any, flush_s: Any) -> None:
    """``run_sweep``'s arguments that its body checks nowhere else, as one-line errors."""
    if not isinstance(cfg, SweepConfig):
        raise ConfigError(
            "cfg must be a SweepConfig (from raymeta.load_sweep or raymeta.parse_sweep), "
            f"got {checks.show_value(cfg)}"
        )
    checks.path("out", out)
    if address is not None and (not isinstance(address, str) or not address.strip()):
        raise ConfigError(
            f"address must be HOST:PORT, auto or None (a local Ray), got {checks.show_value(address)}"
        )
    checks.boolean("progress", progress)
    if isinstance(flush_s, bool) or not isinstance(flush_s, (int, float)):  # inf: never by time
        raise ConfigError(f"flush_s must be seconds >= 0, got {checks.show_value(flush_s)}")


def run_sweep(
    cfg: SweepConfig,
    out: Path,
    address: str | None = None,
    max_concurrency: int | None = None,
    progress: bool = True,
    flush_units: int = FLUSH_UNITS,
    flush_s: float = FLUSH_S,
    batch_units: int | None = None,
    local: bool = False,
) -> dict[str, Any]:
    """Run every unit not yet in ``out``'s results dataset; returns counts and wall time.
    ``out`` must not lie inside a meta-checkpoint or a tune run (``check_results_dir``); one
    writer at a time holds its lock (``raymeta.lock``).

    ``local=True`` runs the batches in worker processes on this machine (``max_concurrency``
    of them, default one per CPU this process may use) without importing or starting Ray: the
    same batches, rows, result parts and resume as the Ray path, without Ray's start-up, which
    on a small machine costs more than a whole sweep's fine-tuning. It cannot join a cluster,
    so an ``address`` with it is refused before any work.

    Every argument's type is checked first, as one ``ConfigError`` (a non-``SweepConfig``
    ``cfg`` was an AttributeError, a non-path ``out`` a TypeError, each after the lock)."""
    _check_call(cfg, out, address, progress, flush_s)
    if not isinstance(local, bool):
        raise ConfigError(f"local must be true or false, got {local!r}")
    if local and address is not None:
        raise ConfigError(
            f"local=True runs the sweep on this machine without Ray, so it cannot join the "
            f"cluster at {address!r}: pass address or local, not both"
        )
    check_results_dir(Path(out))
    return _run_locked(
        cfg, out, address, max_concurrency, progress, flush_units, flush_s, batch_units, local
    )


@locks_output("out")  # one writer per results directory
def _run_locked(
    cfg: SweepConfig,
    out: Path,
    address: str | None,
    max_concurrency: int | None,
    progress: bool,
    flush_units: int,
    flush_s: float,
    batch_units: int | None,
    local: bool,
) -> dict[str, Any]:
    """``run_sweep``'s work, under the output lock.

    A batch holds at most ``batch_units`` units (default ``flush_units``; 1 runs every unit
    alone, the unbatched baseline), see ``batch.plan_batches``. Finished batches
    are written once ``flush_units`` units are buffered, or sooner once ``flush_s`` seconds
    passed since the last write; a kill loses at most the buffered and running batches' work."""
    if max_concurrency is not None and (
        isinstance(max_concurrency, bool)
        or not isinstance(max_concurrency, int)
        or not 1 <= max_concurrency <= MAX_CONCURRENCY
    ):
        raise ConfigError(
            f"--max-concurrency must be an integer in 1..{MAX_CONCURRENCY}, got {max_concurrency!r}"
        )
    if isinstance(flush_units, bool) or not isinstance(flush_units, int) or flush_units < 1:
        raise ConfigError(f"flush_units must be an integer >= 1, got {flush_units!r}")
    if batch_units is not None and (
        isinstance(batch_units, bool) or not isinstance(batch_units, int) or batch_units < 1
    ):
        raise ConfigError(f"batch_units must be an integer >= 1, got {batch_units!r}")
    if not flush_s >= 0:
        raise ConfigError(f"flush_s must be >= 0 seconds, got {flush_s!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"results path {out} exists and is not a directory")
    roots = check_sweep(cfg)
    sink = ResultSink(out, cfg.name)
    done = sink.done_keys()
    todo = [u for u in cfg.units() if u["key"] not in done]
    total = len(cfg.units())
    t0 = time.perf_counter()
    if progress:
        print(
            f"sweep {cfg.name}: {total} units, {total - len(todo)} already done, {len(todo)} to run",
            flush=True,
        )
    if not todo:
        return {"units": total, "ran": 0, "wall_s": 0.0}
    cap = min(batch_units or flush_units, flush_units)
    opened = (
        _local_batches(cfg, roots, todo, max_concurrency, cap)
        if local
        else _ray_batches(cfg, roots, todo, address, max_concurrency, cap)
    )
    with opened as (runner, queue):
        bar = Progress(f"sweep {cfg.name}", total, quiet=not progress)
        _dispatch(runner, queue, sink, bar, total - len(todo), flush_units, flush_s)
    return {"units": total, "ran": len(todo), "wall_s": time.perf_counter() - t0}


Batch = list[dict[str, Any]]
Rows = dict[str, list[dict[str, Any]]]
RESUME = "finished units are kept, rerun the same command to resume"


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

    def result(self, handle: Hashable, batch: Batch) -> Rows:
        """The finished batch's rows by unit key; a failure is one line (``RaymetaError``)."""
        ...


def _dispatch(
    runner: BatchRunner,
    queue: list[Batch],
    sink: ResultSink,
    bar: Progress,
    done_before: int,
    flush_units: int,
    flush_s: float,
) -> None:
    """Keep ``runner.slots`` batches submitted until ``queue`` is empty, and publish finished
    batches through ``sink`` (whole batches only, once ``flush_units`` units are buffered or
    ``flush_s`` seconds passed since the last write). The ``finally`` publishes what is
    buffered on an error or Ctrl-C too, so a rerun only repeats the batches that were running."""
    pending: dict[Hashable, Batch] = {}
    buffer: Rows = {}
    finished = 0
    flushed = time.monotonic()

    def fill() -> None:
        while queue and len(pending) < runner.slots:
            batch = queue.pop(0)
            pending[runner.submit(batch)] = batch

    try:
        with bar:
            bar.update(done_before)
            fill()
            while pending:
                handle = runner.wait_one(list(pending))
                batch = pending.pop(handle)
                # the freed slot starts its next batch before this driver takes the finished
                # rows and writes a part (measured: a worker idled 0.5 s per write otherwise)
                fill()
                buffer.update(runner.result(handle, batch))
                finished += len(batch)
                if len(buffer) >= flush_units or time.monotonic() - flushed >= flush_s:
                    sink.append_many(buffer)
                    buffer, flushed = {}, time.monotonic()
                bar.update(done_before + finished, note=f"last {batch[-1]['key']}")
    finally:  # finished units are kept on an error or Ctrl-C, too
        if buffer:
            sink.append_many(buffer)


def _keys(batch: Batch) -> str:
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


def _unit_error(exc: BaseException, key: str) -> RaymetaError:
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

    def result(self, handle: Hashable, batch: Batch) -> Rows:
        try:
            return cast(Rows, self._ray.get(cast(Any, handle)))
        except self._ray.exceptions.RayError as exc:
            raise _unit_error(exc, _keys(batch)) from None


@contextlib.contextmanager
def _ray_batches(
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

    with ray_context(address):
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
        return self._pool.submit(run_batch, batch, self._cfg, self._roots)

    def wait_one(self, handles: list[Hashable]) -> Hashable:
        futures = cast("list[Future[Rows]]", handles)
        done, _ = wait(futures, return_when=FIRST_COMPLETED)
        return next(f for f in futures if f in done)

    def result(self, handle: Hashable, batch: Batch) -> Rows:
        try:
            return cast("Future[Rows]", handle).result()
        except BrokenProcessPool:
            text = "a local worker process died, killed by a signal or out of memory"
            raise _failure(RuntimeError(), _keys(batch), text) from None
        except Exception as exc:
            raise _failure(exc, _keys(batch)) from None

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

    def result(self, handle: Hashable, batch: Batch) -> Rows:
        threads = torch.get_num_threads()
        try:
            return run_batch(batch, self._cfg, self._roots)
        except Exception as exc:
            raise _failure(exc, _keys(batch)) from None
        finally:
            torch.set_num_threads(threads)


@contextlib.contextmanager
def _local_batches(
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
