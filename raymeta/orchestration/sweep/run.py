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
(submit a batch, wait for one, take its rows; ``backends``, the only module of the sweep
that imports Ray). Why a local path at all: on a small machine Ray's start, its workers' first
imports and its shutdown (3-6 s on 2 cores) cost more than a 200-task sweep's fine-tuning.
"""

from __future__ import annotations

import time
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import torch

from raymeta import checks
from raymeta.errors import ConfigError, DataError
from raymeta.finetune.run import run_strategy
from raymeta.finetune.strategy import AUTO, Strategy, resolve_auto
from raymeta.lock import locks_output
from raymeta.orchestration.sweep.backends import (
    Batch,
    BatchRunner,
    local_batches,
    ray_batches,
)
from raymeta.orchestration.sweep.batch import (
    cached_checkpoint,
    plan_unit,
    unit_rows,
)
from raymeta.orchestration.sweep.config import SweepConfig, parse_sweep
from raymeta.paths import check_outside_artifacts
from raymeta.plugins import add_import_roots, check_portable, import_roots
from raymeta.priors import load_priors
from raymeta.progress import Progress
from raymeta.results import ResultSink
from raymeta.results.sink import KeyedRows
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


def _check_call(cfg: Any, out: Any, address: Any, progress: Any, flush_s: Any) -> SweepConfig:
    """``run_sweep``'s arguments that its body checks nowhere else, as one-line errors; returns
    ``cfg`` checked as a sweep file is (``parse_sweep``): a ``SweepConfig`` built by hand
    (``population=0``, a relative meta path a Ray worker would resolve elsewhere) is refused or
    normalised here, not found wrong in a worker."""
    if not isinstance(cfg, SweepConfig):
        raise ConfigError(
            "cfg must be a SweepConfig (from raymeta.load_sweep or raymeta.parse_sweep), "
            f"got {checks.show_value(cfg)}"
        )
    try:
        checked = parse_sweep(cfg.to_dict())
    except (TypeError, ValueError, AttributeError) as exc:  # a field of the wrong type
        raise ConfigError(f"sweep: a SweepConfig field has the wrong type ({exc})") from None
    checks.path("out", out)
    if address is not None and (not isinstance(address, str) or not address.strip()):
        raise ConfigError(
            f"address must be HOST:PORT, auto or None (a local Ray), got {checks.show_value(address)}"
        )
    checks.boolean("progress", progress)
    if isinstance(flush_s, bool) or not isinstance(flush_s, (int, float)):  # inf: never by time
        raise ConfigError(f"flush_s must be seconds >= 0, got {checks.show_value(flush_s)}")
    return checked


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
    """Run every unit not yet in ``out``'s results dataset; returns counts (``units``, ``ran``)
    and seconds: ``wall_s`` in all, of which ``start_s`` starting the backend (Ray: joining or
    starting it, ``local``: the worker pool) and ``stop_s`` stopping it.
    ``out`` must not lie inside a meta-checkpoint or a tune run (``check_results_dir``); one
    writer at a time holds its lock (``raymeta.lock``).

    ``local=True`` runs the batches in worker processes on this machine (``max_concurrency``
    of them, default one per CPU this process may use) without importing or starting Ray: the
    same batches, rows, result parts and resume as the Ray path, without Ray's start-up, which
    on a small machine costs more than a whole sweep's fine-tuning. It cannot join a cluster,
    so an ``address`` with it is refused before any work.

    Every argument's type is checked first, as one ``ConfigError`` (a non-``SweepConfig``
    ``cfg`` was an AttributeError, a non-path ``out`` a TypeError, each after the lock)."""
    cfg = _check_call(cfg, out, address, progress, flush_s)
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
        return {"units": total, "ran": 0, "wall_s": 0.0, "start_s": 0.0, "stop_s": 0.0}
    cap = min(batch_units or flush_units, flush_units)
    opened = (
        local_batches(cfg, roots, todo, max_concurrency, cap)
        if local
        else ray_batches(cfg, roots, todo, address, max_concurrency, cap)
    )
    t_open = time.perf_counter()
    with opened as (runner, queue):
        t_up = time.perf_counter()
        bar = Progress(f"sweep {cfg.name}", total, quiet=not progress)
        _dispatch(runner, queue, sink, bar, total - len(todo), flush_units, flush_s)
        t_done = time.perf_counter()
    end = time.perf_counter()
    # how much of the wall the backend's start (an embedded Ray's ``ray.init``, the local pool's
    # fork) and stop took: a process that runs several sweeps on one Ray pays them once
    return {
        "units": total,
        "ran": len(todo),
        "wall_s": end - t0,
        "start_s": t_up - t_open,
        "stop_s": end - t_done,
    }


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
    buffer: list[KeyedRows] = []
    buffered = finished = 0
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
                buffer.append(runner.result(handle, batch))  # kept even if ``fill`` fails
                buffered += len(batch)
                finished += len(batch)
                # the freed slot starts its next batch before this driver writes a part
                # (measured: a worker idled 0.5 s per write otherwise)
                fill()
                if buffered >= flush_units or time.monotonic() - flushed >= flush_s:
                    sink.append_keyed(buffer)
                    buffer, buffered, flushed = [], 0, time.monotonic()
                bar.update(done_before + finished, note=f"last {batch[-1]['key']}")
    finally:  # finished units are kept on an error or Ctrl-C, too
        if buffer:
            sink.append_keyed(buffer)
