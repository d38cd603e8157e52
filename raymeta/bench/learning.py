"""``raymeta bench learning``: does meta-training actually learn? (issue 2, section 5)

MAML on the sinusoid family (MLP 1-40-40-1, K=10 support + 10 query, meta-batch 25, 2,000
meta-steps, one inner SGD step of 0.01 as in the MAML paper, outer Adam 5e-3 -- with the
paper's 1e-3, 2k steps reach only ~0.92), then the MSE on 500 held-out meta-TEST tasks after 1 / 5 / 10 SGD steps (lr 0.01) on K=5 points, scored on 100
other points of each task -- and the same from the random init the run started from.
Target: meta-init MSE after 10 steps < 0.6 and >= 5x lower than from the random init.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from raymeta.bench.args import add_json_out
from raymeta.core.train import MetaTrainConfig, MetaTrainer, meta_train
from raymeta.fileio import atomic_write_json
from raymeta.options import add_renamed, float_arg, int_arg
from raymeta.tasks import TaskBatch, TaskFamily

HELP = "MAML sinusoid: held-out MSE after fine-tuning from the meta-init vs a random init"
EVAL_STEPS = (1, 5, 10)
TARGET_MSE, TARGET_RATIO = 0.6, 5.0
# held-out tasks, built as one batch before meta-training: a size past this was an endless
# (and ever larger) task list instead of a refusal
MAX_TEST_TASKS = 10_000


def held_out_batch(family: TaskFamily, n: int, dtype: torch.dtype) -> TaskBatch:
    """The first ``n`` fixed meta-test tasks as one batch (support = train, query = test)."""
    tasks = [family.task("test", i) for i in range(n)]
    return TaskBatch(
        torch.stack([t.x_train for t in tasks]),
        torch.stack([t.y_train for t in tasks]),
        torch.stack([t.x_test for t in tasks]),
        torch.stack([t.y_test for t in tasks]),
    ).to(dtype=dtype)


def scores(tr: MetaTrainer, batch: TaskBatch) -> dict[int, float]:
    return {k: tr.engine.evaluate(tr.params, batch, steps=k)["loss"] for k in EVAL_STEPS}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int_arg(1), default=2000, help="meta-training steps")
    p.add_argument(
        "--test-tasks",
        type=int_arg(1, MAX_TEST_TASKS),
        default=500,
        help="held-out meta-test tasks",
    )
    add_renamed(p, "--eval-tasks", "--test-tasks", type=int_arg(1, MAX_TEST_TASKS))
    p.add_argument(
        "--inner-steps",
        type=int_arg(0, 100_000),
        default=1,
        help="inner SGD steps during meta-training",
    )
    p.add_argument(
        "--inner-lr",
        type=float_arg(0.0, low_open=True),
        default=0.01,
        help="inner SGD step size (training and fine-tuning)",
    )
    p.add_argument(
        "--outer-lr",
        type=float_arg(0.0, low_open=True),
        default=5e-3,
        help="Adam step size of the outer loop",
    )
    p.add_argument("--seed", type=int_arg(0), default=0)
    p.add_argument(
        "--smoke-test",
        action="store_true",
        help="50 steps on 50 tasks: a smoke test, not the benchmark",
    )
    add_renamed(p, "--quick", "--smoke-test", action="store_true")
    add_json_out(p, "also write the figures as JSON")


def run(args: argparse.Namespace) -> int:
    steps, n_eval = (50, 50) if args.smoke_test else (args.steps, args.test_tasks)
    cfg = MetaTrainConfig(
        family="sinusoid",
        family_options={"shots": 10, "queries": 10, "task_shots": 5, "test_size": 100},
        model="mlp",
        model_options={"widths": [40, 40]},
        algo="maml",
        inner_steps=args.inner_steps,
        inner_lr=args.inner_lr,
        outer_optimizer="adam",
        outer_lr=args.outer_lr,
        meta_batch=25,
        steps=steps,
        seed=args.seed,
        val_every=max(steps // 10, 1),
    ).validate()
    random_init = MetaTrainer(cfg)  # the very init meta-training starts from
    batch = held_out_batch(random_init.family, n_eval, random_init.dtype)
    t0 = time.perf_counter()
    trainer = meta_train(
        cfg,
        progress=lambda s, m: print(
            f"step {s:5d}  " + "  ".join(f"{k} {v:.3f}" for k, v in m.items()), flush=True
        ),
        log_every=max(steps // 10, 1),
    )
    seconds = time.perf_counter() - t0
    meta, rand = scores(trainer, batch), scores(random_init, batch)
    print(f"\nMSE on {n_eval} held-out tasks after k SGD steps (lr {args.inner_lr}) on K=5 points:")
    print(f"{'k':>3} {'meta-init':>10} {'random':>10} {'ratio':>7}")
    for k in EVAL_STEPS:
        print(f"{k:>3} {meta[k]:>10.3f} {rand[k]:>10.3f} {rand[k] / meta[k]:>7.1f}")
    final, ratio = meta[EVAL_STEPS[-1]], rand[EVAL_STEPS[-1]] / meta[EVAL_STEPS[-1]]
    ok = final < TARGET_MSE and ratio >= TARGET_RATIO
    print(
        f"meta-training: {steps} steps in {seconds:.1f} s; target (< {TARGET_MSE} and >= {TARGET_RATIO:.0f}x): {'met' if ok else 'MISSED'}"
    )
    if args.out:
        out: dict[str, Any] = {
            "steps": steps,
            "eval_tasks": n_eval,
            "meta_init_mse": {str(k): v for k, v in meta.items()},
            "random_init_mse": {str(k): v for k, v in rand.items()},
            "ratio_at_10": ratio,
            "train_seconds": seconds,
            "target_met": ok,
        }
        atomic_write_json(Path(args.out), out)
    return 0
