"""``raymeta bench meta-train``: tasks/s of meta-training in-process vs Ray Train W=1 and W=2.

Workloads: sinusoid MAML (5 inner steps, meta-batch 1000) and Conv4 on digits (5-way 5-shot,
meta-batch 64). Every figure is steady-state throughput of the outer loop (draw tasks,
meta-gradient, all-reduce, outer step): the in-process loop is timed after warm-up steps, and a
Ray Train run is timed from its workers' progress intervals after the first, so the ~20 s of
``fit()`` start-up and teardown is reported apart. Each Ray worker and the in-process run use the
same number of torch threads (``--threads``), so W=1 vs in-process isolates the per-step cost
of running under Ray Train. Each figure is also given per CPU second (process CPU time of the
in-process run / of rank 0), which stays meaningful on a shared, overloaded machine where wall
time does not. All runs share one Ray instance started here.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from raymeta.bench.args import MAX_THREADS, add_json_out
from raymeta.core.train import MetaTrainConfig, MetaTrainer
from raymeta.fileio import atomic_write_json
from raymeta.options import add_renamed, int_arg

HELP = "tasks/s of meta-training: in-process engine vs Ray Train with 1 and 2 workers"

WORKLOADS = {
    "sinusoid-maml5": MetaTrainConfig(
        family="sinusoid", algo="maml", inner_steps=5, inner_lr=0.01, meta_batch=1000
    ),
    "digits-conv4": MetaTrainConfig(
        family="digits",
        family_options={"ways": 5, "shots": 5, "queries": 15},
        model="conv4",
        algo="maml",
        inner_steps=1,
        inner_lr=0.1,
        meta_batch=64,
    ),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--steps",
        type=int_arg(1),
        default=None,
        help="outer steps timed per run (default 40, smoke test 8)",
    )
    p.add_argument(
        "--warmup",
        type=int_arg(0),
        default=None,
        help="untimed outer steps first (default 5, smoke test 2)",
    )
    p.add_argument(
        "--threads",
        type=int_arg(1, MAX_THREADS),
        default=1,
        help="torch threads of the in-process run and of each Ray worker",
    )
    p.add_argument(
        "--workers",
        type=int_arg(1),
        nargs="+",
        default=[1, 2],
        help="Ray Train worker counts to time",
    )
    p.add_argument(
        "--workload",
        choices=sorted(WORKLOADS),
        nargs="+",
        default=list(WORKLOADS),
        help="which workloads",
    )
    p.add_argument(
        "--meta-batch", type=int_arg(1), default=None, help="override every workload's meta-batch"
    )
    p.add_argument(
        "--smoke-test",
        action="store_true",
        help="few steps (a smoke test; figures are not steady)",
    )
    add_renamed(p, "--quick", "--smoke-test", action="store_true")
    add_json_out(p, "also write the figures as JSON records")


def in_process_rate(cfg: MetaTrainConfig, steps: int, warmup: int) -> tuple[float, float]:
    """Steady-state (tasks per wall second, tasks per CPU second) of the outer loop in this process."""
    tr = MetaTrainer(cfg)
    for _ in range(warmup):
        _, g = tr.local_grad()
        tr.apply(g)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        _, g = tr.local_grad()
        tr.apply(g)
    n = steps * cfg.meta_batch
    return n / (time.perf_counter() - t0), n / (time.process_time() - c0)


def ray_rate(
    cfg: MetaTrainConfig, workers: int, threads: int, steps: int, warmup: int, tmp: Path
) -> tuple[float, float, float]:
    """(tasks per wall second, tasks per rank-0 CPU second, fit() seconds) after the warm-up steps."""
    from raymeta.orchestration.meta_train.ray_train import train_distributed

    records: list[dict[str, Any]] = []
    total = warmup + steps
    res = train_distributed(
        dataclasses.replace(cfg, steps=total, val_every=total, val_tasks=8),
        tmp / f"{cfg.family}-w{workers}",
        workers=workers,
        cpus_per_worker=threads,
        checkpoint_every=total,
        max_failures=0,
        overwrite=True,
        progress=records.append,
        log_every=warmup,
    )
    prog = sorted((r for r in records if r.get("event") == "progress"), key=lambda r: r["step"])
    tasks = secs = cpu = 0.0
    for prev, cur in zip(prog, prog[1:], strict=False):
        if prev["step"] >= warmup:  # intervals after the warm-up ones
            n = (cur["step"] - prev["step"]) * cfg.meta_batch
            tasks, secs = tasks + n, secs + n / cur["tasks_per_s"]
            cpu += n / cur["cpu_tasks_per_s"]
    return tasks / secs, tasks / cpu, res.seconds


def check_args(args: argparse.Namespace) -> None:
    """Every workload's config at every ``--workers`` count validated before anything runs: a
    meta-batch smaller than a worker count was refused only after the in-process timing and
    the Ray start, by that worker count's run."""
    for name in args.workload:
        cfg = WORKLOADS[name]
        if args.meta_batch:
            cfg = dataclasses.replace(cfg, meta_batch=args.meta_batch)
        for w in args.workers:
            dataclasses.replace(cfg, shards=w).validate()


def run(args: argparse.Namespace) -> int:
    from raymeta.orchestration.ray_runtime import (
        check_resources,
        check_resources_before_start,
        ray_context,
    )

    check_args(args)
    # the largest worker count against the cluster before any timing: against the embedded
    # Ray's CPUs before it starts, and against the cluster once joined (RAY_ADDRESS)
    most = max(args.workers)
    need, what = most * args.threads, f"--workers {most} with --threads {args.threads} CPUs each"
    check_resources_before_start(None, need, what=what)

    steps = args.steps or (8 if args.smoke_test else 40)
    warmup = args.warmup or (2 if args.smoke_test else 5)
    torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    print("tasks/s: per wall second (ratio to in-process) | per CPU second of rank 0 (ratio)")
    with tempfile.TemporaryDirectory(prefix="raymeta-bench-mt-") as d, ray_context(None):
        # (it was refused by its own Ray Train run, after every smaller count and the
        # in-process timing had run)
        check_resources(need, what=what)
        for name in args.workload:
            cfg = WORKLOADS[name]
            if args.meta_batch:
                cfg = dataclasses.replace(cfg, meta_batch=args.meta_batch)
            base, base_cpu = in_process_rate(cfg, steps, warmup)
            rows.append(_row(name, cfg, "in-process", base, base_cpu, base, base_cpu, 0.0))
            for w in args.workers:
                rate, cpu, fit_s = ray_rate(cfg, w, args.threads, steps, warmup, Path(d))
                rows.append(_row(name, cfg, f"ray-w{w}", rate, cpu, base, base_cpu, fit_s))
    for r in rows:
        r.update(threads=args.threads, steps=steps, warmup=warmup)
    if args.out:
        atomic_write_json(args.out, rows)
    return 0


def _row(
    name: str,
    cfg: MetaTrainConfig,
    runner: str,
    rate: float,
    cpu: float,
    base: float,
    base_cpu: float,
    fit_s: float,
) -> dict[str, Any]:
    extra = f"  (fit() {fit_s:.0f} s in all)" if fit_s else ""
    print(
        f"{name:15s} B={cfg.meta_batch:<5d} {runner:11s} {rate:9.0f} (x{rate / base:.2f}) | {cpu:9.0f} (x{cpu / base_cpu:.2f}){extra}",
        flush=True,
    )
    return {
        "workload": name,
        "meta_batch": cfg.meta_batch,
        "runner": runner,
        "tasks_per_s": rate,
        "ratio": rate / base,
        "cpu_tasks_per_s": cpu,
        "cpu_ratio": cpu / base_cpu,
        "fit_s": fit_s,
    }
