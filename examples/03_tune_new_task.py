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

import raymeta


def small_checkpoint(where: Path, steps: int, fit: raymeta.PriorFitConfig) -> Path:
    """A small sinusoid meta-checkpoint with priors fitted for tune members of
    ``fit.max_steps`` steps."""
    path = where / "sinusoid-meta"
    trainer = raymeta.meta_train(raymeta.MetaTrainConfig(steps=steps, meta_batch=16, val_tasks=10))
    raymeta.save_meta_checkpoint(path, trainer.to_checkpoint())
    priors = raymeta.fit_priors(raymeta.load_meta_checkpoint(path), fit)
    raymeta.write_priors(path, priors.to_dict())
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
        trials, steps = (2, 10) if small else (4, 60)
        # smoke sizes: just enough to exercise each stage; the strategies below are named, so
        # the smoke run skips priors fit's strategy selection (what tune's "auto" would use)
        fit = raymeta.PriorFitConfig(
            n_tasks=4 if small else 8,
            n_configs=8 if small else 32,
            max_steps=steps,
            select_tasks=0 if small else None,
        )
        meta = Path(args.meta) if args.meta else small_checkpoint(work, 10 if small else 500, fit)
        for strategy in ("meta+learned+pbt", "scratch+broad+pbt"):
            request = raymeta.TuneRequest(
                meta,
                "sinusoid:7",
                trials=trials,
                members_per_trial=4,
                budget=trials * 4 * steps,  # total member-steps: `steps` per member
                strategy=strategy,
                out=work / f"tune-{strategy.split('+')[0]}",
            )
            report = raymeta.tune(request, verbose=0)
            best = report["best"]
            exploits = sum(e["kind"] == "exploit" for e in report["lineage"])
            print(
                f"{strategy:<18} val {best['val_loss']:.4f}  test {best['test_loss']:.4f}  "
                f"member-steps {report['member_steps']} of {report['budget']}  "
                f"PBT exploits {exploits}"
            )


if __name__ == "__main__":
    main()
