"""Is raymeta's default tune strategy (``auto``) never worse than the simple choices? (issue 15)

For each family: meta-train in-process, fit priors with strategy selection on meta-val tasks
(``raymeta priors fit``: the arms x final picks scored on meta-val test splits), then sweep
``auto`` (what selection chose) against ``meta+fixed-default``, ``scratch+broad+pbt``,
``meta+learned+pbt`` and ``meta+broad+pbt`` at the same population and steps per member over
N held-out meta-test tasks x seeds with ``raymeta sweep``'s machinery. Prints per family: what
selection chose and why, the per-strategy table (mean over tasks of the seed-averaged test loss
with its 95% interval, median), the per-task win rate of ``auto`` against every other strategy,
and (sinusoid, digits) the time to quality of ``auto`` against scratch.

Families: ``sinusoid`` and ``digits`` (where the defaults were developed), ``bumps`` (a
regression family of our own: linear trend + 2 Gaussian bumps, heteroscedastic noise, 10 train
/ 10 val points; ``bench_families.py``) and ``digits-plain`` (digits without rotations: 3-way,
class-disjoint meta-splits by digit 0-3 / 4-6 / 7-9, 5 shots and a 5-per-class val split).

    .venv/bin/python tests/benchmarks/strategy_selection.py --tasks 20 --seeds 3 --out runs/sel
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_families

from raymeta.core.checkpoint import (
    load_meta_checkpoint,
    priors_file,
    save_meta_checkpoint,
    write_priors,
)
from raymeta.core.train import MetaTrainConfig, meta_train
from raymeta.finetune import fit_priors
from raymeta.orchestration.sweep.config import parse_sweep
from raymeta.orchestration.sweep.run import run_sweep
from raymeta.results import read_results
from raymeta.results.curves import run_curves
from raymeta.results.summary import mean_ci95

_DIGITS = {"ways": 5, "shots": 1, "queries": 15, "task_shots": 5}
_PLAIN = {
    "rotations": False,
    "ways": 3,
    "shots": 5,
    "queries": 5,
    "task_shots": 5,
    "val_size": 5,
    "test_size": 50,
}
_MLP = {"model": "mlp", "model_options": {"widths": [64, 64]}}
FAMILIES: dict[str, MetaTrainConfig] = {
    "sinusoid": MetaTrainConfig(steps=1000, meta_batch=25),
    "bumps": MetaTrainConfig(family="bench_families:Bumps", steps=1000, meta_batch=25),
    "digits": MetaTrainConfig(
        family="digits",
        family_options=_DIGITS,
        inner_steps=5,
        inner_lr=0.1,
        steps=800,
        meta_batch=16,
        val_tasks=20,
        **_MLP,  # type: ignore[arg-type]
    ),
    "digits-plain": MetaTrainConfig(
        family="digits",
        family_options=_PLAIN,
        inner_steps=5,
        inner_lr=0.1,
        steps=800,
        meta_batch=16,
        val_tasks=20,
        **_MLP,  # type: ignore[arg-type]
    ),
}
STRATEGIES = [
    "auto",
    "meta+fixed-default",
    "scratch+broad+pbt",
    "meta+learned+pbt",
    "meta+broad+pbt",
]
BASELINES = ("meta+fixed-default", "scratch+broad+pbt")


def prepare(root: Path, family: str, args: argparse.Namespace) -> Path:
    meta = root / f"{family}-meta"
    t = time.perf_counter()
    if not (meta / "meta.json").exists():
        cfg = FAMILIES[family]
        tr = meta_train(replace(cfg, steps=args.meta_steps) if args.meta_steps else cfg)
        save_meta_checkpoint(meta, tr.to_checkpoint(), overwrite=True)
        print(f"{family}: meta-trained in {time.perf_counter() - t:.0f}s", flush=True)
    if priors_file(meta) is None or args.refit_priors:
        t = time.perf_counter()
        fitted = fit_priors(
            load_meta_checkpoint(meta),
            n_tasks=16,
            n_configs=32,
            objective="anytime",
            max_steps=args.steps,
            refine_repeats=1,
            select_tasks=args.select_tasks,
            select_population=args.population,
            select_interval=args.interval,
        )
        write_priors(meta, fitted.to_dict())
        print(f"{family}: priors + selection in {time.perf_counter() - t:.0f}s", flush=True)
    return meta


def per_task(table: Any) -> dict[str, dict[str, float]]:
    """{strategy: {task: test loss averaged over seeds}}."""
    df = table.to_pandas()
    df = df[df.metric == "test_loss"]
    g = df.groupby(["strategy", "task"])["value"].mean()
    out: dict[str, dict[str, float]] = {}
    for (s, t), v in g.items():
        out.setdefault(str(s), {})[str(t)] = float(v)
    return out


def time_to_quality(table: Any, warm: str) -> dict[str, float]:
    """Median share of scratch's member-steps ``warm`` needs to reach scratch's final best val
    loss, and the share of runs where ``warm``'s test loss is lower (as time_to_quality.py)."""
    curves = run_curves(table, "val_loss")
    df = table.to_pandas()
    fin = df[df.metric == "test_loss"].set_index(["strategy", "task", "seed"])["value"]
    fracs, wins = [], []
    for (strat, task, seed), c in curves.items():
        s = curves.get(("scratch+broad+pbt", task, seed))
        if strat != warm or s is None:
            continue
        hit = np.flatnonzero(c.best <= float(s.best[-1]))
        fracs.append(float(c.budget[hit[0]]) / float(s.budget[-1]) if len(hit) else math.inf)
        wins.append(fin[(warm, task, seed)] < fin[("scratch+broad+pbt", task, seed)])
    return {"median_fraction": float(np.median(fracs)), "test_wins": float(np.mean(wins))}


def analyse(table: Any, family: str, meta: Path) -> dict[str, Any]:
    pt = per_task(table)
    tasks = sorted(pt["auto"])
    rows = {}
    for s, vals in pt.items():
        v = np.array([vals[t] for t in tasks])
        mean, half = mean_ci95(v)
        rows[s] = {"mean": mean, "ci95": half, "median": float(np.median(v))}
    a = np.array([pt["auto"][t] for t in tasks])
    wins = {}
    for s in pt:
        if s == "auto":
            continue
        b = np.array([pt[s][t] for t in tasks])
        d = a - b
        keep = np.argsort(-np.abs(d))[min(2, (len(d) - 1) // 2) :]
        wins[s] = {
            "win_rate": float(((a < b).sum() + 0.5 * (a == b).sum()) / len(tasks)),
            "mean_diff": float(d.mean()),
            "median_diff": float(np.median(d)),
            "mean_diff_without_top2": float(d[keep].mean()),
        }
    sel = json.loads(Path(str(priors_file(meta))).read_text()).get("selection", {})
    best_base = min(BASELINES, key=lambda s: rows[s]["mean"])
    out = {
        "family": family,
        "tasks": len(tasks),
        "chosen": sel.get("chosen"),
        "why": sel.get("why"),
        "rows": rows,
        "auto_vs": wins,
        "target_mean": rows["auto"]["mean"] <= 1.05 * rows[best_base]["mean"]
        or rows[best_base]["mean"] >= rows["auto"]["mean"] - rows["auto"]["ci95"],
        "target_wins": all(wins[b]["win_rate"] >= 0.6 for b in BASELINES),
    }
    if family in ("sinusoid", "digits"):
        out["ttq"] = time_to_quality(table, "auto")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tasks", type=int, default=20)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--population", type=int, default=8)
    ap.add_argument("--steps", type=int, default=100, help="steps per member")
    ap.add_argument("--interval", type=int, default=5)
    ap.add_argument("--select-tasks", type=int, default=20)
    ap.add_argument("--families", nargs="+", default=list(FAMILIES))
    ap.add_argument("--meta-steps", type=int, default=None, help="override (smoke runs)")
    ap.add_argument("--refit-priors", action="store_true", help="fit priors again")
    ap.add_argument("--out", default="runs/sel")
    args = ap.parse_args()
    root = Path(args.out)
    report = []
    for family in args.families:
        meta = prepare(root, family, args)
        cfg = parse_sweep(
            {
                "name": f"sel-{family}",
                "meta": [str(meta)],
                "strategies": STRATEGIES,
                "tasks": args.tasks,
                "seeds": list(range(args.seeds)),
                "population": args.population,
                "steps_per_member": args.steps,
                "interval": args.interval,
                "fixed_steps": args.steps,
            }
        )
        res = run_sweep(cfg, root / "results", progress=False)
        out = analyse(read_results(root / "results", sweep=cfg.name), family, meta)
        out["sweep_s"] = res["wall_s"]
        report.append(out)
        print(json.dumps(out, indent=1), flush=True)
    (root / "strategy_selection.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
