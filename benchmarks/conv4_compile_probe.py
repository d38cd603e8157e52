"""A probe, not a path raymeta takes (issue 17, BENCHMARKS.md "Issue 17, seventh pass"):
``torch.compile`` (inductor, CPU) of a ``torch.func`` Conv4 MAML meta-gradient on folded
tasks, against the engine's eager folded path and the looped reference, one thread, process
CPU time. ``torch.autograd.grad(create_graph=True)`` cannot be compiled (double backward of
compiled graphs), so the compiled function is ``grad_and_value`` of a query loss whose inner
step is ``torch.func.grad``: one traced graph that inductor may fuse.

Usage: python benchmarks/conv4_compile_probe.py [--tasks 4]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from raymeta.allocator import retain_freed_memory
from raymeta.core.conv_batched import fold_inputs, folded_forward, folded_meta_grad
from raymeta.core.models import Conv4
from raymeta.core.reference import ref_meta_grad
from raymeta.tasks.base import TaskBatch


def cpu_seconds(fn: Callable[[], Any], calls: int = 3, rounds: int = 3) -> float:
    best = 1e9
    for _ in range(rounds):
        t0 = time.process_time()
        for _ in range(calls):
            fn()
        best = min(best, (time.process_time() - t0) / calls)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=4)
    t = ap.parse_args().tasks
    retain_freed_memory()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = Conv4((1, 28, 28), 5, hidden=64)
    params = {k: v.detach() for k, v in model.named_parameters()}
    names = list(params)
    g = torch.Generator().manual_seed(0)
    xs, ys = torch.randn(t, 5, 1, 28, 28, generator=g), torch.randint(0, 5, (t, 5), generator=g)
    xq, yq = torch.randn(t, 75, 1, 28, 28, generator=g), torch.randint(0, 5, (t, 75), generator=g)
    lr, per_task = 0.4, torch.vmap(F.cross_entropy)
    sx, qx = fold_inputs(xs), fold_inputs(xq)

    def meta_loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        fast = {n: p[n].unsqueeze(0).expand(t, *p[n].shape) for n in names}

        def inner(f: dict[str, torch.Tensor]) -> torch.Tensor:
            return per_task(folded_forward(model, f, sx), ys).sum()

        step = torch.func.grad(inner)(fast)
        fast = {n: fast[n] - lr * step[n] for n in names}
        return per_task(folded_forward(model, fast, qx), yq).sum()

    compiled = torch.compile(torch.func.grad_and_value(meta_loss))
    t0 = time.process_time()
    got, _ = compiled(params)
    print(f"torch {torch.__version__}: first compiled call {time.process_time() - t0:.1f} CPU-s")

    def eager() -> Any:
        return folded_meta_grad(model, F.cross_entropy, params, names, xs, ys, xq, yq, 1, lr, False)

    batch = TaskBatch(xs, ys, xq, yq)

    def looped() -> Any:
        return ref_meta_grad(model, "classification", "maml", params, batch, 1, lr)

    _, want = eager()
    err = max(float((got[k] - want[k]).abs().max()) for k in names)
    print(f"max |compiled - eager| {err:.1e} (float32)")
    for _ in range(2):
        te, tc, tl = cpu_seconds(eager), cpu_seconds(lambda: compiled(params)), cpu_seconds(looped)
        print(
            f"{t} tasks, tasks/s: eager folded {t / te:.2f}, compiled {t / tc:.2f}, looped"
            f" {t / tl:.2f} (compiled {tl / tc:.2f}x looped, eager {tl / te:.2f}x looped)"
        )


if __name__ == "__main__":
    main()
