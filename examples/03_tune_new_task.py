"""Tune a new task with a warm-started Ray Tune population (the Python API of `raymeta tune`).

Run from the repository root (takes a few minutes on a 2-core CPU):

    .venv/bin/python examples/03_tune_new_task.py [META_DIR]
    .venv/bin/python examples/03_tune_new_task.py --smoke-test     # tiny sizes, used by the tests

Without META_DIR it meta-trains a small sinusoid checkpoint and fits its priors first (the
same thing `raymeta meta-train` + `raymeta priors fit` do), then tunes held-out task 7 twice:
warm-started (meta-init + learned prior) and from scratch (random init + broad prior).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from raymeta.core.checkpoint import load_meta_checkpoint, save_meta_checkpoint, write_priors
from raymeta.core.train import MetaTrainConfig, meta_train
from raymeta.orchestration.tune.run import run_tune
from raymeta.priors import fit_priors


def small_checkpoint(where: Path, steps: int) -> Path:
    path = where / "sinusoid-meta"
    trainer = meta_train(MetaTrainConfig(steps=steps, meta_batch=16, val_tasks=10))
    save_meta_checkpoint(path, trainer.to_checkpoint())
    write_priors(
        path,
        fit_priors(load_meta_checkpoint(path), n_tasks=8, n_configs=32, max_steps=50).to_dict(),
    )
    return path


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "meta", nargs="?", help="a meta-checkpoint with priors (default: make a small one)"
    )
    ap.add_argument("--smoke-test", action="store_true", help="tiny sizes, for CI")
    args = ap.parse_args()
    small = args.smoke_test
    with tempfile.TemporaryDirectory(prefix="raymeta-example-") as d:
        work = Path(d)
        meta = Path(args.meta) if args.meta else small_checkpoint(work, 40 if small else 500)
        for init, prior in (("meta", "learned"), ("scratch", "broad")):
            report = run_tune(
                meta,
                "sinusoid:7",
                population=2 if small else 4,
                members_per_trial=4,
                budget=(2 * 4 * 10) if small else 4 * 4 * 60,
                init=init,
                prior=prior,
                out=work / f"tune-{init}",
                verbose=0,
            )
            best = report["best"]
            exploits = sum(e["kind"] == "exploit" for e in report["lineage"])
            print(
                f"{init:>8}+{prior:<8} val {best['val_loss']:.4f}  test {best['test_loss']:.4f}  "
                f"member-steps {report['member_steps']}  PBT exploits {exploits}"
            )


if __name__ == "__main__":
    main()
