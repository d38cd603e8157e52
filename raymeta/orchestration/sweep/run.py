"""``raymeta sweep``: many held-out tasks x strategies x seeds, distributed as Ray tasks.

Each unit (meta-checkpoint, strategy, task, seed) is one Ray task running an in-process,
vmapped population (``raymeta.finetune.run.run_population``); up to the cluster's CPU count run
at once.
The driver buffers finished units and appends them to the results dataset in batches (every
``flush_units`` units or ``flush_s`` seconds, and at the end), one part file per batch listing
its units' keys: a 200-task x 4-strategy sweep leaves a few dozen files, not 800. Appends are
atomic and idempotent, so a killed sweep rerun with the same command skips the published units,
re-runs the buffered ones and leaves no duplicate or missing rows.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raymeta.core.checkpoint import MetaCheckpoint, load_meta_checkpoint
from raymeta.errors import ClusterError, ConfigError, DataError, RaymetaError
from raymeta.finetune.curves import final_rows
from raymeta.finetune.run import run_strategy
from raymeta.finetune.strategy import AUTO, Strategy, resolve_auto
from raymeta.lock import locks_output
from raymeta.orchestration.sweep.config import SweepConfig
from raymeta.plugins import add_import_roots, check_portable, import_roots
from raymeta.priors import load_priors
from raymeta.progress import Progress
from raymeta.results import ResultSink
from raymeta.tasks import make_family, resize_splits


@functools.lru_cache(maxsize=8)
def _checkpoint(path: str) -> MetaCheckpoint:
    return load_meta_checkpoint(path)


def run_unit(
    unit: dict[str, Any], cfg: SweepConfig, import_roots: list[str] | None = None
) -> list[dict[str, Any]]:
    """Run one (meta, strategy, task, seed) unit and return its result rows (pure, no Ray).

    ``import_roots``: where the driver found the user's model and family modules, if any."""
    add_import_roots(import_roots or [])
    torch.set_num_threads(1)
    ckpt = _checkpoint(unit["meta"])
    family = make_family(resize_splits(ckpt.family, cfg.task_options, "sweep: task_options key"))
    task = family.task("test", int(unit["task"]))
    auto = unit["strategy"] == AUTO
    strat = resolve_auto(ckpt)[0] if auto else Strategy.parse(unit["strategy"])
    seed = int(unit["seed"])
    # ``auto`` runs what strategy selection measured: a default fine-tune as long as a member
    steps = cfg.fixed_steps if strat.fixed and not auto else cfg.steps_per_member
    res = run_strategy(
        ckpt,
        strat,
        task,
        population=cfg.population,
        steps=steps,
        interval=cfg.interval,
        seed=seed,
        rng=np.random.default_rng([seed, int(unit["task"])]),
    )
    common = {"sweep": cfg.name, "strategy": unit["label"], "task": task.task_id, "seed": seed}
    return res.curves.rows(common) + final_rows(
        common, "best", res.member_steps, res.test, res.pick.config, res.wall_s
    )


MAX_CONCURRENCY = 4096
FLUSH_UNITS = 32  # finished units per results part
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
        ckpt = _checkpoint(meta)
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


@locks_output("out")  # one writer per results directory
def run_sweep(
    cfg: SweepConfig,
    out: Path,
    address: str | None = None,
    max_concurrency: int | None = None,
    progress: bool = True,
    flush_units: int = FLUSH_UNITS,
    flush_s: float = FLUSH_S,
) -> dict[str, Any]:
    """Run every unit not yet in ``out``'s results dataset; returns counts and wall time.

    Finished units are written in batches of ``flush_units``, or sooner once ``flush_s``
    seconds passed since the last write; a kill loses at most the buffered units' work."""
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
        remote = ray.remote(num_cpus=1, max_retries=2)(run_unit)
        cfg_ref = ray.put(cfg)
        pending: dict[Any, dict[str, Any]] = {}
        queue = list(todo)
        finished = 0
        buffer: dict[str, list[dict[str, Any]]] = {}
        flushed = time.monotonic()
        bar = Progress(f"sweep {cfg.name}", total, quiet=not progress)
        try:
            with bar:
                bar.update(total - len(todo))
                while queue or pending:
                    while queue and len(pending) < slots:
                        u = queue.pop(0)
                        pending[remote.remote(u, cfg_ref, roots)] = u
                    ready, _ = ray.wait(list(pending), num_returns=1)
                    for ref in ready:
                        u = pending.pop(ref)
                        try:
                            buffer[u["key"]] = ray.get(ref)
                        except ray.exceptions.RayError as exc:
                            raise _unit_error(exc, u["key"]) from None
                        finished += 1
                        if len(buffer) >= flush_units or time.monotonic() - flushed >= flush_s:
                            sink.append_many(buffer)
                            buffer, flushed = {}, time.monotonic()
                        bar.update(total - len(todo) + finished, note=f"last {u['key']}")
        finally:  # finished units are kept on an error or Ctrl-C, too
            if buffer:
                sink.append_many(buffer)
    return {"units": total, "ran": len(todo), "wall_s": time.perf_counter() - t0}
