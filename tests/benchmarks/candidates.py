"""Does model selection cost quality? The candidate set against each single candidate and
against scratch, at the same member-step budget (issue 14 benchmark).

For each family (sinusoid, digits) it trains three candidates once, in this process:

* sinusoid: ``maml`` (MLP 40-40, MAML), ``wide-reptile`` (MLP 80-80, Reptile),
  ``pretrain`` (MLP 40-40, multi-task pretraining);
* digits (5-way, 8x8, class-disjoint meta-splits): ``mlp-maml`` (MLP 64-64, MAML),
  ``cnn-fomaml`` (Conv4 hidden 16, GroupNorm, FOMAML), ``mlp-pretrain`` (MLP 64-64, multi-task
  pretraining);

then writes four checkpoints from the SAME trained weights: all three candidates (``set``) and
one per candidate, fits priors on each with the same settings, and runs the sweep strategy
``meta+learned+pbt`` on every checkpoint plus ``scratch+broad+pbt`` on ``set``, over the same
held-out meta-test tasks and seeds, with the same population and steps per member. It prints
mean test loss (and accuracy) with its standard error per family and strategy, and the
candidate set's mean minus the best single candidate's. Pure in-process (``run_unit``, the
sweep's own unit runner), so the numbers do not depend on Ray scheduling.

    .venv/bin/python tests/benchmarks/candidates.py --tasks 20 --seeds 2
    .venv/bin/python tests/benchmarks/candidates.py --smoke        # seconds, for a quick look
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from raymeta.core.checkpoint import (
    MetaCheckpoint,
    load_meta_checkpoint,
    save_meta_checkpoint,
    write_priors,
)
from raymeta.core.train import MetaTrainConfig
from raymeta.finetune import PriorFitConfig, fit_priors
from raymeta.orchestration.meta_train.local import run_local_meta_train
from raymeta.orchestration.sweep.config import parse_sweep
from raymeta.orchestration.sweep.run import run_unit

FAMILIES: dict[str, dict[str, Any]] = {
    "sinusoid": {
        "base": {"family": "sinusoid", "model": "mlp", "inner_steps": 1, "inner_lr": 0.01},
        "candidates": [
            "maml",
            "wide-reptile widths=[80,80] algo=reptile inner_steps=5 inner_lr=0.02",
            "pretrain algo=pretrain",
        ],
    },
    "digits": {
        "base": {
            "family": "digits",
            "family_options": {"ways": 5, "shots": 5, "queries": 10, "task_shots": 5},
            "model": "mlp",
            "model_options": {"widths": [64, 64]},
            "inner_steps": 3,
            "inner_lr": 0.1,
        },
        "candidates": [
            "mlp-maml",
            "cnn-fomaml model=conv4 hidden=16 algo=fomaml",
            "mlp-pretrain algo=pretrain",
        ],
    },
}


def split_checkpoint(ck: MetaCheckpoint, name: str, where: Path) -> Path:
    """A one-candidate checkpoint holding candidate ``name``'s trained weights unchanged."""
    one = MetaCheckpoint(
        family=ck.family,
        candidates={name: ck.candidates[name]},
        config={
            **ck.config,
            "candidates": [c for c in ck.config["candidates"] if c["name"] == name],
        },
        metrics=ck.metrics,
    )
    return save_meta_checkpoint(where / name, one)


def mean_sem(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, float("nan")
    var = sum((x - m) ** 2 for x in xs) / (len(xs) - 1)
    return m, math.sqrt(var / len(xs))


def run_family(name: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    spec = FAMILIES[name]
    cfg = MetaTrainConfig(
        **spec["base"],
        steps=args.meta_steps,
        meta_batch=16,
        val_tasks=20,
        val_every=max(args.meta_steps // 4, 1),
        candidates=spec["candidates"],
    )
    t0 = time.perf_counter()
    ck = run_local_meta_train(cfg, work / f"{name}-set", progress=False)
    t_train = time.perf_counter() - t0
    metas = {"set": work / f"{name}-set"}
    for cand in ck.candidates:
        metas[cand] = split_checkpoint(ck, cand, work / f"{name}-single")
    fit = PriorFitConfig(
        n_tasks=args.fit_tasks,
        n_configs=args.fit_configs,
        max_steps=args.steps_per_member,
        objective="anytime",
    )
    model_probs: dict[str, float] = {}
    t0 = time.perf_counter()
    for label, path in metas.items():
        priors = fit_priors(load_meta_checkpoint(path), fit)
        write_priors(path, priors.to_dict())
        if label == "set":
            model_probs = dict(priors.model_probs)
    t_fit = time.perf_counter() - t0
    runs = [
        (f"meta+learned+pbt [{label}]", path, "meta+learned+pbt") for label, path in metas.items()
    ]
    runs.append(("scratch+broad+pbt [set]", metas["set"], "scratch+broad+pbt"))
    table: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    for label, path, strategy in runs:
        sweep = parse_sweep(
            {
                "meta": [str(path)],
                "strategies": [strategy],
                "tasks": list(range(args.tasks)),
                "seeds": list(range(args.seeds)),
                "population": args.population,
                "steps_per_member": args.steps_per_member,
                "interval": max(args.steps_per_member // 5, 1),
            }
        )
        losses, accs, picked = [], [], []
        for unit in sweep.units():
            rows = run_unit(unit, sweep)
            final = {r["metric"]: r for r in rows if r["metric"].startswith("test_")}
            losses.append(float(final["test_loss"]["value"]))
            if "test_accuracy" in final:
                accs.append(float(final["test_accuracy"]["value"]))
            hp = final["test_loss"]["hparams"]
            picked.append((json.loads(hp) if isinstance(hp, str) else hp).get("model"))
        table[label] = {
            "loss": mean_sem(losses),
            "accuracy": mean_sem(accs) if accs else None,
            "winners": {m: picked.count(m) for m in sorted(set(map(str, picked)))},
        }
    t_sweep = time.perf_counter() - t0
    return {
        "table": table,
        "model_probs": model_probs,
        "seconds": {"meta_train": t_train, "priors": t_fit, "sweeps": t_sweep},
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--families", default="sinusoid,digits")
    ap.add_argument("--meta-steps", type=int, default=1000)
    ap.add_argument("--fit-tasks", type=int, default=16)
    ap.add_argument("--fit-configs", type=int, default=48)
    ap.add_argument("--tasks", type=int, default=20, help="held-out meta-test tasks")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--population", type=int, default=8)
    ap.add_argument("--steps-per-member", type=int, default=50)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes")
    args = ap.parse_args()
    if args.smoke:
        args.meta_steps, args.fit_tasks, args.fit_configs = 20, 3, 8
        args.tasks, args.seeds, args.population, args.steps_per_member = 2, 1, 4, 10
    torch.set_num_threads(2)
    print(
        f"meta-steps {args.meta_steps}, priors {args.fit_tasks} tasks x {args.fit_configs} "
        f"configs, {args.tasks} held-out tasks x {args.seeds} seeds, population "
        f"{args.population} x {args.steps_per_member} steps per member (same for every row)"
    )
    with tempfile.TemporaryDirectory(prefix="raymeta-candidates-") as d:
        for fam in args.families.split(","):
            res = run_family(fam, args, Path(d))
            probs = ", ".join(f"{k} {v:.2f}" for k, v in res["model_probs"].items())
            secs = ", ".join(f"{k} {v:.0f} s" for k, v in res["seconds"].items())
            print(f"\n## {fam}: P(best candidate) from priors: {probs} ({secs})")
            print(f"{'strategy [checkpoint]':<40} {'test loss':>18} {'test acc':>16}  winners")
            for label, row in res["table"].items():
                m, s = row["loss"]
                acc = row["accuracy"]
                acc_s = f"{acc[0]:.3f} +- {acc[1]:.3f}" if acc else "-"
                print(f"{label:<40} {m:>9.4f} +- {s:.4f} {acc_s:>16}  {row['winners']}")
            singles = {
                k: v["loss"][0]
                for k, v in res["table"].items()
                if "learned" in k and "[set]" not in k
            }
            best = min(singles, key=singles.__getitem__)
            diff = res["table"]["meta+learned+pbt [set]"]["loss"][0] - singles[best]
            print(f"candidate set minus best single ({best}): {diff:+.4f} test loss")


if __name__ == "__main__":
    main()
