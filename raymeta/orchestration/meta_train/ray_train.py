"""Distributed meta-training on Ray Train (V2 ``TorchTrainer``).

W workers each compute the meta-gradient of their shard of the meta-batch and all-reduce it
(gloo on CPU, NCCL on GPU); all take the same outer step, so W workers reproduce the
in-process run with ``shards = W`` exactly (up to summation order). Run state (Ray Train's
checkpoints) lives outside ``--out`` (see ``_run_state``); rerunning the same call resumes,
``FailureConfig(max_failures)`` restarts a crashed worker group from the last checkpoint, and
``--out`` receives the final meta-checkpoint atomically.

Multi-node clusters need ``storage`` on shared storage (s3://, gs://, NFS): the default local
path is only visible to the node that wrote it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raymeta import checks
from raymeta.core.checkpoint import MetaCheckpoint, load_meta_checkpoint, save_meta_checkpoint
from raymeta.core.train import MetaTrainConfig, preflight, require_config
from raymeta.errors import ClusterError, ConfigError
from raymeta.lock import locks_output
from raymeta.orchestration.meta_train._worker import FINAL_DIR, load_state, train_loop
from raymeta.orchestration.meta_train.run_state import RunPlan, begin_run, finish_run, plan_run
from raymeta.orchestration.ray_runtime import (
    check_resources,
    check_resources_before_start,
    ray_context,
)
from raymeta.plugins import check_portable, import_roots

ProgressFn = Callable[[dict[str, Any]], None]


@dataclass
class MetaTrainResult:
    """The final meta-checkpoint plus the full-precision trainer state and run facts."""

    checkpoint: MetaCheckpoint
    state: dict[str, Any]
    resumed_from: int
    seconds: float
    tasks_per_s: float
    metrics: dict[str, Any]


def _printer(total: int) -> ProgressFn:
    def show(rec: dict[str, Any]) -> None:
        if rec.get("event") == "start":
            what = f"resuming at step {rec['step']}" if rec["step"] else "starting"
            print(f"meta-train: {what} on {rec['world']} worker(s) ({rec['device']})", flush=True)
        elif rec.get("event") == "progress":
            val = rec.get("val_loss")
            vs = f"{val:.4f}" if val is not None else "-"
            print(
                f"step {rec['step']:>{len(str(total))}}/{total}  meta-loss {rec['meta_loss']:.4f}  val-loss {vs}  tasks/s {rec['tasks_per_s']:.0f}",
                flush=True,
            )

    return show


class _Pump:
    """Drains the workers' progress queue on a driver thread while ``fit()`` blocks."""

    def __init__(self, queue: Any, sink: ProgressFn | None):
        self.queue, self.sink = queue, sink
        self.records: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _handle(self, rec: dict[str, Any]) -> None:
        self.records.append(rec)
        if self.sink is not None:
            self.sink(rec)

    def _run(self) -> None:
        from ray.util.queue import Empty

        while not self._stop.is_set():
            try:
                self._handle(self.queue.get(timeout=0.5))
            except Empty:
                continue
            except Exception:  # the queue actor is gone: nothing more to show
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            while not self.queue.empty():
                self._handle(self.queue.get_nowait())
            self.queue.shutdown()
        except Exception:
            pass


def _check_cfg_out(cfg: Any, out: Any, log_every: Any = None) -> None:
    """The Python API's ``cfg``, ``out`` and ``log_every`` as one-line errors: a dict config was
    a TypeError from ``dataclasses.replace``, a non-path ``out`` one from ``pathlib``, and a
    ``log_every`` below 1 went unchecked."""
    require_config(cfg)
    if log_every is not None:
        checks.integer("log-every", log_every, 1)
    if not isinstance(out, (str, os.PathLike)) or not str(out).strip():
        raise ConfigError(f"out must be a directory path, got {checks.show_value(out)}")


def _check_args(
    workers: int,
    gpus_per_worker: float,
    cpus_per_worker: float,
    checkpoint_every: int,
    max_failures: int,
) -> None:
    checks.integer("workers", workers, 1)
    checks.number("gpus-per-worker", gpus_per_worker, 0.0)
    checks.number("cpus-per-worker", cpus_per_worker, 0.0, low_open=True)
    checks.integer("checkpoint-every", checkpoint_every, 1)
    if checks.integer("max-failures", max_failures) < -1:
        raise ConfigError(f"max-failures must be >= -1 (-1 = retry forever), got {max_failures}")


def _check_resources(
    address: str | None, workers: int, cpus_per_worker: float, gpus_per_worker: float = 0.0
) -> None:
    """Before an embedded Ray starts: its CPUs and GPUs hold every worker (``_fit`` checks a
    cluster's once joined, in the same words)."""
    check_resources_before_start(
        address,
        workers * cpus_per_worker,
        what=f"meta-train with {workers} worker(s)",
        gpus=workers * gpus_per_worker,
    )


@locks_output("out")  # one writer per --out: a second run is refused, not interleaved
def train_distributed(
    cfg: MetaTrainConfig,
    out: str | Path,
    workers: int,
    gpus_per_worker: float = 0,
    address: str | None = None,
    storage: str | None = None,
    checkpoint_every: int = 100,
    max_failures: int = 3,
    overwrite: bool = False,
    progress: bool | ProgressFn = True,
    cpus_per_worker: float = 1,
    log_every: int | None = None,
    _debug: dict[str, Any] | None = None,
) -> MetaTrainResult:
    """Meta-train on Ray Train and write the meta-checkpoint to ``out`` (see module doc)."""
    _check_cfg_out(cfg, out)
    _check_args(workers, gpus_per_worker, cpus_per_worker, checkpoint_every, max_failures)
    cfg = dataclasses.replace(cfg, shards=workers).validate()
    check_portable("family", cfg.family)
    check_portable("model", cfg.model)
    preflight(cfg)
    plan = plan_run(cfg, out, storage, overwrite)
    sink: ProgressFn | None = _printer(cfg.steps) if progress is True else (progress or None)
    if plan.already_done:
        ckpt = load_meta_checkpoint(plan.out)
        if sink is not None:
            print(
                f"meta-train: {plan.out} already holds the finished run of this config; nothing to do",
                flush=True,
            )
        return MetaTrainResult(ckpt, {}, cfg.steps, 0.0, 0.0, dict(ckpt.metrics))
    _check_resources(address, workers, cpus_per_worker, gpus_per_worker)
    with ray_context(address):
        return _fit(
            cfg,
            plan,
            workers,
            gpus_per_worker,
            cpus_per_worker,
            checkpoint_every,
            max_failures,
            sink,
            log_every,
            _debug,
        )


def run_meta_train(
    cfg: MetaTrainConfig,
    out: str | Path,
    workers: int,
    gpus_per_worker: float = 0,
    address: str | None = None,
    storage: str | None = None,
    checkpoint_every: int = 100,
    max_failures: int = 3,
    overwrite: bool = False,
    progress: bool | ProgressFn = True,
    cpus_per_worker: float = 1,
    log_every: int | None = None,
) -> MetaCheckpoint:
    """Meta-train with ``workers`` Ray Train workers; returns the meta-checkpoint written to
    ``out``. A config with ``candidates`` trains each of them (one Ray Train run per trained
    candidate, on one Ray instance) and writes all of them into ``out``."""

    def train(single: MetaTrainConfig, part: str | Path, fresh: bool) -> MetaCheckpoint:
        return train_distributed(
            single,
            part,
            workers,
            gpus_per_worker,
            address,
            storage,
            checkpoint_every,
            max_failures,
            fresh,
            progress,
            cpus_per_worker,
            log_every,
        ).checkpoint

    _check_cfg_out(cfg, out, log_every)
    _check_args(workers, gpus_per_worker, cpus_per_worker, checkpoint_every, max_failures)
    cfg = dataclasses.replace(cfg, shards=workers).validate()
    if not cfg.candidates:
        return train(cfg, out, overwrite)
    from raymeta.orchestration.meta_train.candidates import train_candidates

    started = False
    with contextlib.ExitStack() as stack:

        def one(single: MetaTrainConfig, part: Path, fresh: bool) -> MetaCheckpoint:
            nonlocal started
            if not started:  # Ray starts when the first candidate trains, after every check
                _check_resources(address, workers, cpus_per_worker, gpus_per_worker)
                stack.enter_context(ray_context(address))
                started = True
            return train(single, part, fresh)

        return train_candidates(
            cfg, out, one, preflight, overwrite, progress is not False, check_portable
        )


def _fit(
    cfg: MetaTrainConfig,
    plan: RunPlan,
    workers: int,
    gpus: float,
    cpus: float,
    checkpoint_every: int,
    max_failures: int,
    sink: ProgressFn | None,
    log_every: int | None,
    debug: dict[str, Any] | None,
) -> MetaTrainResult:
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    from raymeta.orchestration.meta_train._failures import training_failure
    from raymeta.orchestration.meta_train._local_torch import torch_config

    check_resources(workers * cpus, workers * gpus, what=f"meta-train with {workers} worker(s)")
    if plan.local_storage and len([n for n in ray.nodes() if n.get("Alive")]) > 1:
        print(
            f"meta-train: warning: run state is on this node ({plan.storage}); multi-node clusters need --storage on shared storage",
            flush=True,
        )
    for name in ("ray.train", "ray.tune", "ray.data"):
        logging.getLogger(name).setLevel(logging.WARNING)
    use_gpu = gpus > 0
    resources = {"CPU": cpus, **({"GPU": gpus} if use_gpu else {})}
    queue = Queue(actor_options={"num_cpus": 0})
    loop_config = {
        "cfg": cfg.to_dict(),
        "use_gpu": use_gpu,
        "threads": cpus,
        "checkpoint_every": checkpoint_every,
        "log_every": log_every
        or max(1, min(checkpoint_every, cfg.val_every, max(cfg.steps // 20, 1))),
        "progress": queue,
        "debug": debug,
        "import_roots": import_roots([cfg.model, cfg.family]),  # the user's modules, if any
        "storage": plan.storage,  # to find checkpoints newer than Ray's record on resume
        "run_name": plan.name,
    }
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=loop_config,
        torch_config=torch_config("nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers, use_gpu=use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(  # type: ignore[call-arg]  # V2 RunConfig (mypy sees the V1 stub)
            name=plan.name,
            storage_path=plan.storage,
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    )
    begin_run(plan, cfg)
    pump = _Pump(queue, sink)
    t0 = time.perf_counter()
    try:
        result = trainer.fit()
    except Exception as exc:  # Ray Train / controller failures: one line, says if a rerun resumes
        err = training_failure(exc)
        if err is None:
            raise
        raise err from None
    finally:
        pump.close()
    seconds = time.perf_counter() - t0
    if result.checkpoint is None:
        raise ClusterError("meta-training finished without a final checkpoint")
    with result.checkpoint.as_directory() as d:
        state = load_state(d)
        ckpt = load_meta_checkpoint(Path(d) / FINAL_DIR)
    save_meta_checkpoint(plan.out, ckpt, overwrite=True)
    ckpt = load_meta_checkpoint(plan.out)
    finish_run(plan)
    metrics = dict(result.metrics or {})
    start = int(metrics.get("resumed_from", 0))
    rates = [r["tasks_per_s"] for r in pump.records if r.get("event") == "progress"]
    rate = sum(rates) / len(rates) if rates else 0.0
    if sink is not None:
        val = metrics.get("val_loss")
        print(
            f"meta-train: done, {cfg.steps} steps"
            + (f" (resumed at {start})" if start else "")
            + f" in {seconds:.1f} s on {workers} worker(s), ~{rate:.0f} tasks/s; final meta-loss {metrics.get('meta_loss', float('nan')):.4f}"
            + (f", val-loss {val:.4f}" if val is not None else "")
            + f"; wrote {plan.out}",
            flush=True,
        )
    return MetaTrainResult(ckpt, state, start, seconds, rate, metrics)
