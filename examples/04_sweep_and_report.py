"""Benchmark sweep + report through the Python API.

Meta-trains a small sinusoid initialization in-process, fits priors (and chooses a strategy), sweeps five strategies
over held-out tasks on the embedded local Ray (results land in a Parquet dataset), then prints
the per-strategy table and writes PNG plots.

    python examples/04_sweep_and_report.py --out runs/example-sweep
    python examples/04_sweep_and_report.py --smoke-test     # seconds, used by the test suite
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import raymeta


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", default=None, help="output directory (default: a temp dir)")
    ap.add_argument("--smoke-test", action="store_true", help="tiny sizes, for CI")
    args = ap.parse_args()
    small = args.smoke_test
    out = Path(args.out or tempfile.mkdtemp(prefix="raymeta-example-"))

    meta = out / "meta"
    if not (meta / "meta.json").exists():
        trainer = raymeta.meta_train(
            raymeta.MetaTrainConfig(steps=10 if small else 2000, meta_batch=10 if small else 25)
        )
        raymeta.save_meta_checkpoint(meta, trainer.to_checkpoint())
        priors = raymeta.fit_priors(
            raymeta.load_meta_checkpoint(meta),
            n_tasks=4 if small else 32,
            n_configs=8 if small else 64,
            max_steps=20 if small else 100,  # the sweep's steps per member
            # then choose the family's strategy on further meta-val tasks ("auto" below)
            select_tasks=2 if small else 16,
            select_population=4 if small else 8,
        )
        raymeta.write_priors(meta, priors.to_dict())

    sweep = raymeta.parse_sweep(
        {
            "name": "example",
            "meta": [str(meta)],
            "strategies": [
                "scratch+broad+random",
                "scratch+broad+pbt",
                "meta+fixed-default",
                "meta+learned+pbt",
                "auto",  # what priors fit chose for this family on meta-val tasks
            ],
            "tasks": 2 if small else 20,
            "seeds": [0],
            "population": 4 if small else 8,  # members per (strategy, task, seed)
            "steps_per_member": 20 if small else 100,
            "interval": 5 if small else 10,
        }
    )
    raymeta.sweep(sweep, out / "results")
    report = raymeta.report(out / "results", sweep="example", plots=out / "plots")
    print(report.text)
    for png in report.plots:
        print("plot:", png)


if __name__ == "__main__":
    main()
