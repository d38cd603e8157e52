"""``raymeta bench engine``: tasks/s of one MAML meta-gradient, vmapped engine vs the rest.

Every implementation computes the same second-order MAML meta-gradient on the SAME tasks:

* ``engine``  -- ``MetaEngine.meta_grad`` (what raymeta trains with);
* ``looped``  -- ``raymeta.core.reference`` (a Python loop over tasks, ``autograd.grad``);
* ``bare``    -- a minimal ``torch.func`` ``grad(vmap(...))`` written inline below, sharing no
  code with the engine: the engine should be within ~10% of it (its abstraction is ~free);
* ``higher`` / ``torchopt`` -- the peers' per-task MAML loops, when those packages import.

* ``engine-vmap`` -- the engine forced onto its vmap path (``conv_path="vmap"``; what the
  engine used on CPU before the folded grouped-convolution path, and still uses on GPU);
* ``engine-ckpt`` -- the engine with ``InnerConfig(checkpoint=True)`` (the long-inner-loop
  workload only: checkpointing trades a forward per step for memory).

Throughput is steady state: one warm-up call, then repeats until ``min_time`` has passed.
Peak memory (``peak MB``) is the rise of the resident set's high-water mark
(``VmHWM``, else ``ru_maxrss``) over one call, measured in a fresh spawned process per implementation, so
one implementation's peak cannot hide another's.
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from raymeta import allocator
from raymeta.bench.args import MAX_THREADS, add_json_out
from raymeta.core.engine import InnerConfig, MetaEngine
from raymeta.core.models import ModelSpec, build_model
from raymeta.core.reference import ref_meta_grad
from raymeta.fileio import atomic_write_json
from raymeta.options import add_renamed, float_arg, int_arg
from raymeta.tasks.base import TaskBatch
from raymeta.tasks.sinusoid import Sinusoid

HELP = "time the vmapped meta-learning engine against a looped reference, bare torch.func and peers"
MAX_MIN_TIME = 86_400.0  # seconds per implementation: a day; infinity would never end


@dataclass
class Workload:
    name: str
    kind: str
    spec: ModelSpec
    steps: int
    lr: float
    meta_batches: tuple[int, ...]
    make: Callable[[int, torch.Generator], TaskBatch]
    checkpoint: bool = False  # also time the engine with a checkpointed inner loop


def _sinusoid(n: int, g: torch.Generator) -> TaskBatch:
    return Sinusoid(shots=10, queries=10).sample("train", n, g)


def _images(
    n: int, g: torch.Generator, ways: int = 5, shots: int = 1, queries: int = 15
) -> TaskBatch:
    """Synthetic 28x28 5-way 1-shot episodes: the timing does not depend on pixel values."""
    xs = torch.rand(n, ways * shots, 1, 28, 28, generator=g)
    xq = torch.rand(n, ways * queries, 1, 28, 28, generator=g)
    ys = torch.arange(ways).repeat_interleave(shots).expand(n, -1).clone()
    yq = torch.arange(ways).repeat_interleave(queries).expand(n, -1).clone()
    return TaskBatch(xs, ys, xq, yq)


def workloads(quick: bool) -> list[Workload]:
    mlp = ModelSpec("mlp", (1,), 1, {"widths": [40, 40]})
    conv = ModelSpec("conv4", (1, 28, 28), 5, {"hidden": 64})
    wide = ModelSpec("mlp", (1,), 1, {"widths": [64, 64] if quick else [512, 512]})
    sin_b = (25,) if quick else (25, 250, 1000)
    long_steps = 3 if quick else 20
    return [
        Workload("sinusoid-mlp-1step", "regression", mlp, 1, 0.01, sin_b, _sinusoid),
        Workload("sinusoid-mlp-5step", "regression", mlp, 5, 0.01, sin_b, _sinusoid),
        Workload(
            "conv4-5way-1shot", "classification", conv, 1, 0.4, (4,) if quick else (32,), _images
        ),
        Workload(
            f"sinusoid-wide-{long_steps}step",
            "regression",
            wide,
            long_steps,
            0.001,
            (4,) if quick else (32,),
            _sinusoid,
            checkpoint=True,
        ),
    ]


# ---------------------------------------------------------------------------- implementations
def _loss(kind: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if kind == "regression":
        return ((out - y) ** 2).mean()
    return F.cross_entropy(out, y)


def bare_meta_grad(
    model: nn.Module,
    kind: str,
    params: dict[str, torch.Tensor],
    b: TaskBatch,
    steps: int,
    lr: float,
) -> dict[str, torch.Tensor]:
    """Second-order MAML in as few torch.func lines as possible (the engine's speed target)."""

    def inner(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return _loss(kind, functional_call(model, p, (x,)), y)

    def task(
        p: dict[str, torch.Tensor],
        xs: torch.Tensor,
        ys: torch.Tensor,
        xq: torch.Tensor,
        yq: torch.Tensor,
    ) -> torch.Tensor:
        for _ in range(steps):
            g = grad(inner)(p, xs, ys)
            p = {k: p[k] - lr * g[k] for k in p}
        return inner(p, xq, yq)

    def meta(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return vmap(task, in_dims=(None, 0, 0, 0, 0))(p, b.xs, b.ys, b.xq, b.yq).mean()

    out: dict[str, torch.Tensor] = grad(meta)(params)
    return out


def higher_meta_grad(model: nn.Module, kind: str, b: TaskBatch, steps: int, lr: float) -> None:
    import higher

    opt = torch.optim.SGD(model.parameters(), lr=lr)
    model.zero_grad()
    for i in range(b.n_tasks):
        with higher.innerloop_ctx(model, opt, copy_initial_weights=False) as (fmodel, diffopt):
            for _ in range(steps):
                diffopt.step(_loss(kind, fmodel(b.xs[i]), b.ys[i]))
            (_loss(kind, fmodel(b.xq[i]), b.yq[i]) / b.n_tasks).backward()


def torchopt_meta_grad(model: nn.Module, kind: str, b: TaskBatch, steps: int, lr: float) -> None:
    import torchopt

    opt = torchopt.MetaSGD(model, lr=lr)
    net_state = torchopt.extract_state_dict(model)
    opt_state = torchopt.extract_state_dict(opt)
    model.zero_grad()
    for i in range(b.n_tasks):
        for _ in range(steps):
            opt.step(_loss(kind, model(b.xs[i]), b.ys[i]))
        (_loss(kind, model(b.xq[i]), b.yq[i]) / b.n_tasks).backward()
        torchopt.recover_state_dict(model, net_state)
        torchopt.recover_state_dict(opt, opt_state)


def _peers() -> list[str]:
    found = []
    for name in ("higher", "torchopt"):
        try:
            __import__(name)
            found.append(name)
        except Exception:  # an optional peer that does not import is simply not timed
            pass
    return found


def time_it(
    fn: Callable[[], Any],
    min_time: float,
    clock: Callable[[], float] = time.perf_counter,
    min_reps: int = 2,
) -> float:
    """Best seconds per call after one warm-up, over repeats filling ``min_time`` (at least
    ``min_reps``). The best call, not the mean, because other processes share this CPU."""
    fn()
    best, reps, start = float("inf"), 0, time.perf_counter()
    while reps < min_reps or time.perf_counter() - start < min_time:
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
        reps += 1
    return best


def _impls(w: Workload, meta_batch: int, peers: list[str]) -> dict[str, Callable[[], Any]]:
    torch.manual_seed(0)
    model = build_model(w.spec)
    batch = w.make(meta_batch, torch.Generator().manual_seed(1))
    if w.kind == "classification":
        batch = TaskBatch(batch.xs, batch.ys.long(), batch.xq, batch.yq.long())
    engine = MetaEngine(model, w.kind, "maml", InnerConfig(w.steps, w.lr))
    params = engine.init_params()
    impls: dict[str, Callable[[], Any]] = {
        "engine": lambda: engine.meta_grad(params, batch),
        "bare": lambda: bare_meta_grad(model, w.kind, params, batch, w.steps, w.lr),
        "looped": lambda: ref_meta_grad(model, w.kind, "maml", params, batch, w.steps, w.lr),
    }
    if engine.uses_folded(batch.xs.device):
        vm = MetaEngine(model, w.kind, "maml", InnerConfig(w.steps, w.lr), conv_path="vmap")
        impls["engine-vmap"] = lambda: vm.meta_grad(params, batch)
    if w.checkpoint:
        ck = MetaEngine(model, w.kind, "maml", InnerConfig(w.steps, w.lr, checkpoint=True))
        impls["engine-ckpt"] = lambda: ck.meta_grad(params, batch)
    if w.kind == "regression":
        if "higher" in peers:
            impls["higher"] = lambda: higher_meta_grad(
                copy.deepcopy(model), w.kind, batch, w.steps, w.lr
            )
        if "torchopt" in peers:
            impls["torchopt"] = lambda: torchopt_meta_grad(
                copy.deepcopy(model), w.kind, batch, w.steps, w.lr
            )
    return impls


def run_workload(
    w: Workload,
    meta_batch: int,
    min_time: float,
    peers: list[str],
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    impls = _impls(w, meta_batch, peers)
    return {name: meta_batch / time_it(fn, min_time, clock) for name, fn in impls.items()}


def _rss_mb() -> float:
    """The resident high-water mark in MB: ``VmHWM`` on Linux (per address space, so a spawned
    child does not inherit its parent's peak across exec, as ``ru_maxrss`` does), else
    ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _peak_child(w: Workload, meta_batch: int, impl: str, threads: int, kept: bool = False) -> float:
    torch.set_num_threads(threads)
    if kept:  # the parent keeps freed memory (raymeta.allocator): so does what it measures
        allocator.retain_freed_memory()
    fn = _impls(w, meta_batch, _peers())[impl]
    before = _rss_mb()
    fn()
    return _rss_mb() - before


def peak_memory(w: Workload, meta_batch: int, impls: list[str]) -> dict[str, float]:
    """MB the high-water mark rises during one call of each implementation, each in a fresh
    spawned process (so the parent's own peak does not mask a smaller one)."""
    ctx = multiprocessing.get_context("spawn")
    out = {}
    with ctx.Pool(1, maxtasksperchild=1) as pool:
        for impl in impls:
            args = (w, meta_batch, impl, torch.get_num_threads(), allocator.in_force())
            out[impl] = pool.apply(_peak_child, args)
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_json_out(p, "also write the figures as a JSON list of records")
    p.add_argument(
        "--smoke-test",
        action="store_true",
        help="small meta-batches and short timings (a smoke test)",
    )
    add_renamed(p, "--quick", "--smoke-test", action="store_true")
    p.add_argument(
        "--min-time",
        type=float_arg(0.0, MAX_MIN_TIME),
        default=None,
        help="seconds to time each implementation (default 2, smoke test 0.2)",
    )
    p.add_argument("--only", metavar="TEXT", help="run only the workloads whose name contains TEXT")
    p.add_argument(
        "--no-memory",
        action="store_true",
        help="skip the peak-memory column (one spawned process per implementation)",
    )
    p.add_argument(
        "--threads",
        type=int_arg(1, MAX_THREADS),
        default=None,
        help="torch intra-op threads (default: torch's own choice)",
    )
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: elapsed time; cpu: process CPU time (steadier on a shared machine, use with --threads 1)",
    )


def run(args: argparse.Namespace) -> int:
    if args.only is not None:  # a typo matched nothing: was an empty table and exit 0
        names = [w.name for w in workloads(args.smoke_test)]
        if not any(args.only in n for n in names):
            from raymeta.errors import ConfigError

            raise ConfigError(
                f"--only {args.only!r} matches no workload (names: {', '.join(names)})"
            )
    if args.threads:
        torch.set_num_threads(args.threads)
    min_time = args.min_time if args.min_time is not None else (0.2 if args.smoke_test else 2.0)
    peers = _peers()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    records: list[dict[str, Any]] = []
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} clock; peers: {', '.join(peers) or 'none installed'}"
    )
    print(
        f"{'workload':<22} {'batch':>5} {'impl':<11} {'tasks/s':>10} {'x looped':>9} {'/ bare':>7} {'peak MB':>8}"
    )
    for w in workloads(args.smoke_test):
        if args.only and args.only not in w.name:
            continue
        for mb in w.meta_batches:
            res = run_workload(w, mb, min_time, peers, clock)
            mem = {} if args.no_memory else peak_memory(w, mb, list(res))
            for impl, tps in res.items():
                rec: dict[str, Any] = {
                    "workload": w.name,
                    "meta_batch": mb,
                    "impl": impl,
                    "tasks_per_s": round(tps, 2),
                    "x_looped": round(tps / res["looped"], 3),
                    "x_bare": round(tps / res["bare"], 3),
                }
                if impl in mem:
                    rec["peak_mb"] = round(mem[impl], 1)
                records.append(rec)
                peak = f"{mem[impl]:>8.1f}" if impl in mem else f"{'-':>8}"
                print(
                    f"{w.name:<22} {mb:>5} {impl:<11} {tps:>10.1f} {tps / res['looped']:>9.2f} {tps / res['bare']:>7.2f} {peak}",
                    flush=True,
                )
    if args.out:
        atomic_write_json(Path(args.out), records)
        print(f"wrote {len(records)} records to {args.out}")
    return 0


def main() -> None:  # pragma: no cover - convenience for `python -m raymeta.bench.engine`
    p = argparse.ArgumentParser(description=HELP)
    add_arguments(p)
    raise SystemExit(run(p.parse_args()))


if __name__ == "__main__":  # pragma: no cover
    main()
