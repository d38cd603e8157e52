"""Meta-train MAML on the sinusoid family with Ray Train workers (Python API), then show that
the distributed run equals the in-process run on the same shards, and that rerunning resumes.

    python examples/02_meta_train_ray.py --out runs/sinusoid-maml        # 2 workers, 500 steps
    python examples/02_meta_train_ray.py --address auto --workers 8 ...  # join a running cluster
    python examples/02_meta_train_ray.py --smoke-test                    # a few steps (~30 s)

The CLI does the same: ``raymeta meta-train --family sinusoid --algo maml --workers 2 --out DIR``.
Multi-node clusters need ``--storage`` on shared storage (s3://, gs://, NFS).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

import raymeta


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", help="meta-checkpoint directory (default: a temporary one)")
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers")
    p.add_argument("--steps", type=int, default=500, help="meta-training steps")
    p.add_argument("--address", help="join this Ray cluster instead of starting a local one")
    p.add_argument("--storage", help="run-state storage (local path, s3:// or gs:// URI)")
    p.add_argument(
        "--smoke-test", action="store_true", help="tiny run to check that everything works"
    )
    args = p.parse_args()
    steps = 6 if args.smoke_test else args.steps
    cfg = raymeta.MetaTrainConfig(
        family="sinusoid",
        algo="maml",
        inner_steps=1,
        inner_lr=0.01,
        steps=steps,
        meta_batch=8 if args.smoke_test else 100,
        val_every=max(steps // 5, 1),
        val_tasks=16 if args.smoke_test else 200,
        dtype="float64",
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or Path(tmp) / "meta")
        try:
            ckpt = raymeta.run_meta_train(
                cfg,
                out,
                workers=args.workers,
                address=args.address,
                storage=args.storage,
                checkpoint_every=max(steps // 3, 1),
            )
        except raymeta.RaymetaError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        # The same shards in this process give the same parameters (up to summation order).
        ref = raymeta.meta_train(cfg.__class__(**{**cfg.to_dict(), "shards": args.workers}))
        got = ckpt.candidate().params  # checkpoints store float32 weights
        diff = max(float((got[k] - v.detach().float()).abs().max()) for k, v in ref.params.items())
        print(f"max |Ray Train - in-process| parameter difference: {diff:.2e}")
        ok = diff <= 1e-5
        # Rerunning the same call finds the finished checkpoint and does nothing.
        again = raymeta.run_meta_train(
            cfg,
            out,
            workers=args.workers,
            address=args.address,
            storage=args.storage,
            progress=False,
        )
        same = all(torch.equal(again.candidate().params[k], v) for k, v in got.items())
        print(f"meta-checkpoint: {out} (rerun reused it: {same})")
    return 0 if ok and same else 1


if __name__ == "__main__":
    sys.exit(main())
