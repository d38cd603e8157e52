"""Time to quality of warm-started PBT vs PBT from scratch, over many held-out tasks.

For each family: meta-train in-process, fit priors on meta-val tasks, then sweep
``meta+learned+pbt`` and ``scratch+broad+pbt`` (same population and budget) over N held-out
meta-test tasks with ``raymeta sweep``'s machinery (in-process vmapped populations with the
same PBT rule as a packed Tune trial, distributed as Ray tasks). Prints, per family, how many
member-steps the warm start needs to reach the scratch run's final best validation loss (as a
fraction of scratch's budget) and on how many tasks its final test loss is lower.

    .venv/bin/python tests/benchmarks/time_to_quality.py --tasks 20 --out runs/ttq
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from raymeta.core.checkpoint import (
    load_meta_checkpoint,
    priors_file,
    save_meta_checkpoint,
    write_priors,
)
from raymeta.core.train import MetaTrainConfig, meta_train
from raymeta.finetune import fit_priors
from raymeta.options import parse_options
from raymeta.orchestration.sweep.config import parse_sweep
from raymeta.orchestration.sweep.run import run_sweep
from raymeta.results import read_results
from raymeta.results.curves import run_curves

FAMILIES = {
    "sinusoid": dict(cfg=MetaTrainConfig(steps=2000, meta_batch=25), fit=(32, 64, 2)),
    "digits": dict(
        cfg=MetaTrainConfig(
            family="digits",
            family_options={"ways": 5, "shots": 1, "queries": 15, "task_shots": 5},
            model="mlp",
            model_options={"widths": [64, 64]},
            inner_steps=5,
            inner_lr=0.1,
            steps=1500,
            meta_batch=16,
            val_tasks=50,
        ),
        fit=(16, 32, 1),  # (tasks, configs, fresh-seed re-runs): a Conv4 run costs ~100x an MLP's
    ),
}


def prepare(root: Path, family: str, objective: str, budget: int) -> Path:
    """``root/FAMILY-meta`` with priors: meta-trained here unless a checkpoint is already there
    (e.g. the digits Conv4 from ``gpu_digits_meta.py``, copied in), priors fitted if missing
    (``anytime``: for population members that train ``budget`` steps each)."""
    meta = root / f"{family}-meta"
    if (meta / "meta.json").exists() and priors_file(meta) is not None:
        return meta
    spec = FAMILIES[family]
    t = time.perf_counter()
    if not (meta / "meta.json").exists():
        tr = meta_train(spec["cfg"])  # type: ignore[arg-type]
        save_meta_checkpoint(meta, tr.to_checkpoint(), overwrite=True)
    n_tasks, n_configs, repeats = spec["fit"]  # type: ignore[misc]
    fitted = fit_priors(
        load_meta_checkpoint(meta),
        n_tasks=n_tasks,
        n_configs=n_configs,
        objective=objective,
        max_steps=budget,
        refine_repeats=repeats,
    )
    write_priors(meta, fitted.to_dict())
    print(f"{family}: meta-checkpoint + priors in {time.perf_counter() - t:.0f}s", flush=True)
    return meta


def analyse(table, family: str) -> dict[str, float]:  # type: ignore[no-untyped-def]
    curves = run_curves(table, "val_loss")
    finals = table.to_pandas()
    finals = finals[finals.metric == "test_loss"].set_index(["strategy", "task", "seed"])["value"]
    fracs, wins, n = [], 0, 0
    for (strat, task, seed), c in curves.items():
        if strat != "meta+learned+pbt":
            continue
        s = curves.get(("scratch+broad+pbt", task, seed))
        if s is None:
            continue
        target, budget = float(s.best[-1]), float(s.budget[-1])
        hit = np.flatnonzero(c.best <= target)
        fracs.append(float(c.budget[hit[0]]) / budget if len(hit) else float("inf"))
        n += 1
        wins += int(
            finals[("meta+learned+pbt", task, seed)] < finals[("scratch+broad+pbt", task, seed)]
        )
    f = np.array(fracs)
    return {
        "tasks": n,
        "median_fraction": float(np.median(f)),
        "share_within_0.1": float(np.mean(f <= 0.1)),
        "test_wins": wins / max(n, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tasks", type=int, default=20)
    ap.add_argument("--population", type=int, default=8)
    ap.add_argument("--budget", type=int, default=100, help="steps per member")
    ap.add_argument("--families", nargs="+", default=list(FAMILIES))
    ap.add_argument("--out", default="runs/ttq")
    ap.add_argument(
        "--objective",
        choices=["final", "anytime"],
        default="anytime",
        help="priors objective when they are fitted here (see raymeta priors fit --help)",
    )
    ap.add_argument(
        "--task-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="split size of the held-out tasks (e.g. val_size=50), as in raymeta tune",
    )
    args = ap.parse_args()
    task_options = parse_options(args.task_option, "task")
    root = Path(args.out)
    for family in args.families:
        meta = prepare(root, family, args.objective, args.budget)
        cfg = parse_sweep(
            {
                "name": f"ttq-{family}",
                "meta": [str(meta)],
                "strategies": ["scratch+broad+pbt", "meta+learned+pbt"],
                "tasks": args.tasks,
                "population": args.population,
                "steps_per_member": args.budget,
                "interval": max(1, args.budget // 20),
                "task_options": task_options,
            }
        )
        res = run_sweep(cfg, root / "results", progress=False)
        out = analyse(read_results(root / "results", sweep=cfg.name), family)
        print(
            f"{family}: {out['tasks']} tasks, population {args.population} x {args.budget} steps: "
            f"warm start reaches scratch's final val loss in a median {out['median_fraction']:.3f} of "
            f"scratch's member-steps ({out['share_within_0.1']:.0%} of tasks within 1/10); "
            f"lower test loss on {out['test_wins']:.0%} of tasks; sweep {res['wall_s']:.0f}s",
            flush=True,
        )


if __name__ == "__main__":
    main()
