"""Meta-train MAML on the sinusoid family in this process (no Ray), then compare fine-tuning
from the meta-init with fine-tuning from a random init on held-out tasks.

    python examples/01_sinusoid_local.py                  # 2,000 meta-steps (about a minute)
    python examples/01_sinusoid_local.py --smoke-test     # seconds: a handful of steps
    python examples/01_sinusoid_local.py --out ckpt/      # also save the meta-checkpoint

This uses the plain Python API; ``raymeta meta-train`` does the same across a Ray cluster.
"""

from __future__ import annotations

import argparse
import sys

import torch

import raymeta
from raymeta.core.train import MetaTrainer  # the engine level: a trainer's vmapped evaluate
from raymeta.tasks import TaskBatch


def held_out(trainer: MetaTrainer, n: int) -> TaskBatch:
    """``n`` fixed meta-test tasks: fine-tune on K=5 points, score on 100 others."""
    tasks = [trainer.family.task("test", i) for i in range(n)]
    return TaskBatch(
        torch.stack([t.x_train for t in tasks]),
        torch.stack([t.y_train for t in tasks]),
        torch.stack([t.x_test for t in tasks]),
        torch.stack([t.y_test for t in tasks]),
    ).to(dtype=trainer.dtype)


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--steps", type=int, default=2000, help="meta-training steps")
    p.add_argument("--algo", default="maml", help="maml, fomaml, reptile, metasgd or anil")
    p.add_argument("--test-tasks", type=int, default=500, help="held-out meta-test tasks to score")
    p.add_argument("--out", help="save the meta-checkpoint to this directory")
    p.add_argument(
        "--smoke-test", action="store_true", help="tiny run to check that everything works"
    )
    args = p.parse_args()
    steps, n_eval = (20, 20) if args.smoke_test else (args.steps, args.test_tasks)

    cfg = raymeta.MetaTrainConfig(
        family="sinusoid",
        model_options={"widths": [40, 40]},
        algo=args.algo,
        inner_steps=1,
        inner_lr=0.01,
        outer_lr=5e-3,
        meta_batch=25,
        steps=steps,
        val_every=max(steps // 4, 1),
    )
    try:
        random_init = MetaTrainer(cfg)  # same architecture, untrained
        trainer = raymeta.meta_train(
            cfg,
            progress=lambda s, m: print(
                f"step {s:5d}  " + "  ".join(f"{k} {v:.3f}" for k, v in m.items())
            ),
            log_every=max(steps // 4, 1),
        )
        batch = held_out(trainer, n_eval)
        for name, tr in (("meta-init", trainer), ("random init", random_init)):
            scores = [tr.engine.evaluate(tr.params, batch, steps=k)["loss"] for k in (1, 5, 10)]
            print(
                f"{name:12s} MSE after 1/5/10 steps on K=5: "
                + " / ".join(f"{s:.3f}" for s in scores)
            )
        if args.out:
            path = raymeta.save_meta_checkpoint(
                args.out, trainer.to_checkpoint({"steps": steps}), overwrite=True
            )
            print(f"saved meta-checkpoint to {path}")
    except raymeta.RaymetaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
