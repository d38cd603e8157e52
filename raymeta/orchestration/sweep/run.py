"""``raymeta sweep``: many held-out tasks x strategies x seeds, distributed as Ray tasks.

Units (meta-checkpoint, strategy, task, seed) of one checkpoint and strategy run in batches:
one Ray task trains a batch's units as one packed, vmapped population per model
(``batch.run_batch``), each unit with its own task data, seeds and PBT, so its rows are the
ones it gets alone (``run_unit``); up to the cluster's CPU count of batches run at once.
The driver buffers finished batches and appends them to the results dataset (once at least
``flush_units`` units or ``flush_s`` seconds since the last write, and at the end), one part
file per write listing its units' keys: whole batches only, a few files per sweep. Appends are
atomic and idempotent, so a killed sweep rerun with the same command skips the published units,
re-runs the buffered ones and leaves no duplicate or missing rows.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

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


def _unit_error(exc: BaseException, key: str) -> RaymetaError:
    """A failed unit as one line: the remote error's own message, never its traceback."""
    import ray

    cause: BaseException = exc
    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = getattr(exc, "cause", None) or exc.as_instanceof_cause()
    if isinstance(cause, RaymetaError):
        return ConfigError(f"sweep unit {key}: {_first_line(cause)}")
    if isinstance(cause, ray.exceptions.RayTaskError):
        text = _first_line(cause).removeprefix("ray::")
    else:
        text = f"{type(cause).__name__}: {_first_line(cause)}"
    return ClusterError(
        f"sweep unit {key} failed ({text}); finished units are kept, rerun the same command to resume"
    )


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0][:300] if lines else type(exc).__name__


def check_results_dir(out: Path, label: str = "sweep output") -> None:
    """A results dataset of its own: never inside a meta-checkpoint (its parts would sit among
    the checkpoint's files; ``meta-train --out`` refuses the same) nor a ``raymeta tune`` run
    directory (whose own results live in RUN/results). Checked before the output lock, which
    would otherwise leave its file there first."""
    from raymeta.core.checkpoint import is_meta_checkpoint

    try:
        here = Path(out).expanduser().absolute()
    except (OSError, ValueError):
        return
    for d in (here, *here.parents):
        try:
            run = (d / "run.json").is_file() and (
                (d / "report.json").is_file() or (d / ".trust").is_dir()
            )
        except OSError:
            return
        ckpt = is_meta_checkpoint(d)
        if ckpt or run:
            what = "meta-checkpoint" if ckpt else "tune run"
            raise ConfigError(f"{label} {out} lies inside the {what} {d}; pick a path outside it")


def run_sweep(
    cfg: SweepConfig,
    out: Path,
    address: str | None = None,
    max_concurrency: int | None = None,
    progress: bool = True,
    flush_units: int = FLUSH_UNITS,
    flush_s: float = FLUSH_S,
    batch_units: int | None = None,
) -> dict[str, Any]:
    """Run every unit not yet in ``out``'s results dataset; returns counts and wall time.
    ``out`` must not lie inside a meta-checkpoint or a tune run (``check_results_dir``); one
    writer at a time holds its lock (``raymeta.lock``)."""
    check_results_dir(Path(out))
    return _run_locked(
        cfg, out, address, max_concurrency, progress, flush_units, flush_s, batch_units
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
) -> dict[str, Any]:
    """``run_sweep``'s work, under the output lock.

    A Ray task runs at most ``batch_units`` units (default ``flush_units``; 1 runs every unit
    alone, the unbatched baseline), see ``batch.plan_batches``. Finished batches
    are written once ``flush_units`` units are buffered, or sooner once ``flush_s`` seconds
    passed since the last write; a kill loses at most the buffered and running batches' work."""
    import ray

    from raymeta.orchestration.ray_runtime import ray_context

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
    with ray_context(address):
        slots = max_concurrency or max(1, int(ray.cluster_resources().get("CPU", 1)))
        remote = ray.remote(num_cpus=1, max_retries=2)(run_batch_on_worker)
        cfg_ref = ray.put(cfg)
        pending: dict[Any, list[dict[str, Any]]] = {}
        queue = plan_batches(todo, slots, min(batch_units or flush_units, flush_units))
        finished = 0
        buffer: dict[str, list[dict[str, Any]]] = {}
        flushed = time.monotonic()
        bar = Progress(f"sweep {cfg.name}", total, quiet=not progress)
        try:
            with bar:
                bar.update(total - len(todo))
                while queue or pending:
                    while queue and len(pending) < slots:
                        batch = queue.pop(0)
                        pending[remote.remote(batch, cfg_ref, roots)] = batch
                    ready, _ = ray.wait(list(pending), num_returns=1)
                    for ref in ready:
                        batch = pending.pop(ref)
                        try:
                            buffer.update(ray.get(ref))
                        except ray.exceptions.RayError as exc:
                            raise _unit_error(exc, _keys(batch)) from None
                        finished += len(batch)
                        if len(buffer) >= flush_units or time.monotonic() - flushed >= flush_s:
                            sink.append_many(buffer)
                            buffer, flushed = {}, time.monotonic()
                        bar.update(total - len(todo) + finished, note=f"last {batch[-1]['key']}")
        finally:  # finished units are kept on an error or Ctrl-C, too
            if buffer:
                sink.append_many(buffer)
    return {"units": total, "ran": len(todo), "wall_s": time.perf_counter() - t0}


def _keys(batch: list[dict[str, Any]]) -> str:
    """A batch's units as an error names them."""
    keys = [u["key"] for u in batch]
    return keys[0] if len(keys) == 1 else f"{keys[0]} (one of a batch of {len(keys)})"


def run_batch_on_worker(*args: Any, **kwargs: Any) -> Any:
    """``run_batch`` in a Ray worker, which raymeta's tasks own for its life: freed tensors
    stay in the process (``raymeta.allocator``) so each unit's steps do not page-fault."""
    retain_freed_memory()
    return run_batch(*args, **kwargs)
