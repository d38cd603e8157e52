"""Conv4 on the CPU, layout and evaluation path (issue 17, BENCHMARKS.md "Issue 17, seventh
pass"): in ONE process, alternating rounds so load drift hits every row alike, one thread,
process CPU time:

* the engine's folded Conv4 meta-gradient (meta-batch 32, 5-way 1-shot, 15 queries, 28x28,
  hidden 64, one inner step: ``raymeta bench engine``'s conv4 workload) with NCHW folded
  inputs and with channels-last ones (``conv_batched.fold_inputs``), and the looped
  reference;
* meta-validation of 100 such tasks (``MetaEngine.evaluate``) on the folded path and on the
  vmapped path (``conv_path="vmap"``, what evaluations ran before).

* ``--groups``: instead, forward + backward of a folded Conv4 at several (channels, tasks,
  images per task), NCHW vs channels-last: where ``conv_batched.CHANNELS_LAST_MAX_TASKS``
  comes from.

Usage: python benchmarks/conv4_layout.py [--rounds 5] [--hidden 64] [--groups]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

import raymeta.core.conv_batched as cb
from raymeta.allocator import retain_freed_memory
from raymeta.bench.engine import workloads
from raymeta.core.engine import InnerConfig, MetaEngine
from raymeta.core.models import build_model
from raymeta.core.reference import ref_meta_grad
from raymeta.tasks.base import TaskBatch


def labelled(batch: TaskBatch) -> TaskBatch:
    return TaskBatch(batch.xs, batch.ys.long(), batch.xq, batch.yq.long())


def nchw(x: torch.Tensor) -> torch.Tensor:
    """The fold before channels-last: a contiguous ``(B, T*C, H, W)``."""
    t, b, c, h, w = x.shape
    return x.permute(1, 0, 2, 3, 4).reshape(b, t * c, h, w).contiguous()


def layout_by_fold(rounds: int) -> None:
    """Forward + backward (first order, what a population step runs) of T folded Conv4s on B
    images each, best of ``rounds``, NCHW vs channels-last folded inputs."""
    import torch.nn.functional as F

    from raymeta.core.models import Conv4

    per_task = torch.vmap(F.cross_entropy)
    print("hidden  tasks  images   NCHW ms  channels-last ms  channels-last speed-up")
    for hidden, t, b in [(32, 64, 5), (32, 16, 5), (32, 64, 25), (64, 3, 75), (64, 3, 5),
                         (32, 8, 75), (64, 16, 20)]:  # fmt: skip
        model = Conv4((1, 28, 28), 5, hidden=hidden)
        stacked = {
            k: v.detach().unsqueeze(0).expand(t, *v.shape).clone().requires_grad_(True)
            for k, v in model.named_parameters()
        }
        x, y = torch.randn(t, b, 1, 28, 28), torch.randint(0, 5, (t, b))
        best = {"nchw": 1e9, "cl": 1e9}
        for _ in range(rounds):
            for name, fold in (("nchw", nchw), ("cl", channels_last_fold)):
                t0 = time.process_time()
                loss = per_task(cb.folded_forward(model, stacked, fold(x)), y).sum()
                torch.autograd.grad(loss, list(stacked.values()))
                best[name] = min(best[name], time.process_time() - t0)
        print(
            f"{hidden:>6} {t:>6} {b:>7} {best['nchw'] * 1e3:>9.1f} {best['cl'] * 1e3:>17.1f}"
            f" {best['nchw'] / best['cl']:>23.2f}x"
        )


def channels_last_fold(x: torch.Tensor) -> torch.Tensor:
    """The fold channels-last whatever the number of tasks."""
    return nchw(x).contiguous(memory_format=torch.channels_last)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument(
        "--hidden", type=int, default=64, help="Conv4 channels (meta-train's default: 32)"
    )
    ap.add_argument("--groups", action="store_true", help="the layout table by fold size")
    args = ap.parse_args()
    retain_freed_memory()
    torch.set_num_threads(1)
    if args.groups:
        layout_by_fold(args.rounds)
        return
    conv = next(w for w in workloads(False) if w.name.startswith("conv4"))
    conv = replace(conv, spec=replace(conv.spec, options={"hidden": args.hidden}))
    torch.manual_seed(0)
    model = build_model(conv.spec)
    batch = labelled(conv.make(32, torch.Generator().manual_seed(1)))
    val = labelled(conv.make(100, torch.Generator().manual_seed(2)))
    folded = MetaEngine(model, "classification", "maml", InnerConfig(conv.steps, conv.lr))
    vmapped = MetaEngine(
        model, "classification", "maml", InnerConfig(conv.steps, conv.lr), conv_path="vmap"
    )
    params = folded.init_params()
    channels_last = cb.fold_inputs

    def with_fold(fold: Callable[[torch.Tensor], torch.Tensor], fn: Callable[[], Any]) -> Any:
        def run() -> Any:
            cb.fold_inputs = fold
            try:
                return fn()
            finally:
                cb.fold_inputs = channels_last

        return run

    def engine() -> Any:
        return folded.meta_grad(params, batch)

    def looped() -> Any:
        return ref_meta_grad(model, "classification", "maml", params, batch, conv.steps, conv.lr)

    rows: dict[str, tuple[int, Callable[[], Any]]] = {
        "meta-grad, folded NCHW": (32, with_fold(nchw, engine)),
        "meta-grad, folded channels-last": (32, engine),
        "meta-grad, looped reference": (32, looped),
        "evaluate 100, vmapped": (100, lambda: vmapped.evaluate(params, val)),
        "evaluate 100, folded channels-last": (100, lambda: folded.evaluate(params, val)),
    }
    for _, fn in rows.values():
        fn()  # warm-up
    rates: dict[str, list[float]] = {k: [] for k in rows}
    for _ in range(args.rounds):
        for name, (tasks, fn) in rows.items():
            t0 = time.process_time()
            fn()
            rates[name].append(tasks / (time.process_time() - t0))
    print(f"torch {torch.__version__}, 1 thread, process CPU time, {args.rounds} rounds")
    for name, r in rates.items():
        med = sorted(r)[len(r) // 2]
        print(f"{name:36s} best {max(r):6.2f}  median {med:6.2f} tasks/s")
    best = {k: max(v) for k, v in rates.items()}
    looped = best["meta-grad, looped reference"]
    nchw_x = best["meta-grad, folded NCHW"] / looped
    cl_x = best["meta-grad, folded channels-last"] / looped
    per_round = [
        round(a / b, 2)
        for a, b in zip(
            rates["meta-grad, folded channels-last"], rates["meta-grad, folded NCHW"], strict=True
        )
    ]
    print(f"meta-grad x looped (best): NCHW {nchw_x:.2f}, channels-last {cl_x:.2f}")
    print(f"meta-grad channels-last / NCHW, per round: {per_round}")
    ev = best["evaluate 100, folded channels-last"] / best["evaluate 100, vmapped"]
    print(f"evaluate folded / vmapped (best): {ev:.2f}x")


if __name__ == "__main__":
    main()
