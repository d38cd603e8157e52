"""In-process timings behind BENCHMARKS.md "Issue 17, fifth pass" (one thread, no Ray):

1. one sweep worker's work: ``run_batch`` of each of ``raymeta bench sweep``'s five strategies
   on 100 held-out tasks (8 members per unit), seconds and member-steps/s;
2. a packed Tune trial's work: ``run_population`` of 16 ``meta+broad+random`` members x 400
   steps (reports every 100) vs one member, best of 4, member-steps/s.

META is a meta-checkpoint with priors, e.g. the one ``raymeta bench sweep --out DIR`` keeps in
DIR/meta. Run it under two trees (``PYTHONPATH=<tree>``) to compare code versions.
Usage: python benchmarks/sweep_inprocess.py META
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pyarrow.compute as pc
import torch

from raymeta.bench.sweep import sweep_config
from raymeta.core.checkpoint import load_meta_checkpoint
from raymeta.finetune.run import run_population, strategy_members
from raymeta.finetune.strategy import Strategy
from raymeta.orchestration.sweep.batch import plan_batches, run_batch
from raymeta.tasks import make_family


def sweep_batches(meta: str) -> None:
    cfg = sweep_config(meta, 100)
    batches = plan_batches(cfg.units(), 1, 1000)
    run_batch(batches[0][:2], cfg)  # warm-up: imports, first calls
    total, steps_total = 0.0, 0
    for b in batches:
        t = time.perf_counter()
        rows = run_batch(b, cfg)
        dt = time.perf_counter() - t
        table = rows.table.filter(pc.equal(rows.table["metric"], "test_loss"))
        steps = pc.sum(table["step"]).as_py()
        total, steps_total = total + dt, steps_total + steps
        print(f"{b[0]['strategy']:24s} {len(b)} units {dt:.2f}s {steps / dt:,.0f} member-steps/s")
    print(f"all strategies: {total:.2f}s {steps_total / total:,.0f} member-steps/s")


def packed_trial(meta: str) -> None:
    ck = load_meta_checkpoint(meta)
    task = make_family(ck.family).task("test", 0)
    configs, _, _ = strategy_members(
        ck,
        Strategy.parse("meta+broad+random"),
        task,
        population=64,
        steps=400,
        rng=np.random.default_rng(0),
    )
    run_population(task, ck.candidates, configs[:16], steps=10, interval=5, seed=0, init="meta")
    for n in (1, 16):
        best = float("inf")
        for k in range(4):
            t = time.perf_counter()
            run_population(
                task,
                ck.candidates,
                configs[16 * k : 16 * k + n],
                steps=400,
                interval=100,
                seed=0,
                init="meta",
            )
            best = min(best, time.perf_counter() - t)
        print(f"packed trial, {n} member(s) x 400 steps: {n * 400 / best:,.0f} member-steps/s")


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    torch.set_num_threads(1)
    sweep_batches(sys.argv[1])
    packed_trial(sys.argv[1])


if __name__ == "__main__":
    main()
