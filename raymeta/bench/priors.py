"""``raymeta bench priors``: do the learned priors help on held-out meta-TEST tasks?

Per family: meta-train briefly (or use ``--meta``), fit priors on meta-val tasks (timed), then on
meta-test tasks fine-tune, as one population, a reference pool of broad-space configs, ``draws``
sets of ``samples`` configs from the learned prior and from the broad space, and the portfolio.
Regret is normalised per task over everything evaluated (losses capped at the meta-init's).

Per-family presets (``PRESETS``; any flag overrides them) keep the run to a few minutes on
2 CPUs: sinusoid meta-trains 1000 MAML steps and fits on 32 tasks x 64 configs (the issue's
timing setting); digits is 5-way 1-shot with an MLP (64, 64), 300 MAML steps (5 inner steps at
0.1) at meta-batch 16, fitted on 16 tasks x 64 configs (the family has only 8 meta-val classes,
so more tasks add little). Conv4 made the final evaluation alone take over 16 minutes here.

Quality bars (issue 4): learned best-of-8 mean regret <= 50% of broad best-of-8; the portfolio's
first config beats the broad pool's median config on >= 80% of tasks; sinusoid fit < 120 s.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from raymeta.bench.args import add_json_out
from raymeta.fileio import atomic_write_json
from raymeta.options import int_arg

HELP = "quality of learned priors vs the broad space on held-out meta-test tasks"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--family",
        action="append",
        default=None,
        help="family to benchmark (repeatable; default sinusoid and digits)",
    )
    p.add_argument(
        "--meta",
        default=None,
        help="use this meta-checkpoint instead of meta-training (one family only)",
    )
    p.add_argument(
        "--meta-steps",
        type=int_arg(1),
        default=None,
        help="meta-training steps when no --meta is given (default: the family preset)",
    )
    p.add_argument(
        "--tasks",
        type=int_arg(2, 4096),
        default=None,
        help="meta-val tasks to fit on (default: preset)",
    )
    p.add_argument(
        "--configs",
        type=int_arg(4),
        default=None,
        help="configs per meta-val task (default: preset)",
    )
    p.add_argument("--test-tasks", type=int_arg(1), default=32, help="held-out meta-test tasks")
    p.add_argument("--samples", type=int_arg(1), default=8, help="configs per draw (best-of-N)")
    p.add_argument(
        "--draws", type=int_arg(1), default=8, help="independent draws per prior (averaged)"
    )
    p.add_argument(
        "--reference",
        type=int_arg(1),
        default=64,
        help="broad reference pool (for the median config)",
    )
    # PriorFitConfig's MAX_SEED, checked here so a bad seed is refused before meta-training
    p.add_argument("--seed", type=int_arg(0, 2**32 - 1), default=0)
    add_json_out(p, "also write the results to this JSON file")


PRESETS: dict[str, dict[str, Any]] = {
    "sinusoid": {"meta_steps": 1000, "tasks": 32, "configs": 64, "train": {}},
    "digits": {
        "meta_steps": 300,
        "tasks": 16,
        "configs": 64,
        "train": {
            "family_options": {"ways": 5, "shots": 1},
            "model": "mlp",
            "model_options": {"widths": [64, 64]},
            "inner_steps": 5,
            "inner_lr": 0.1,
            "meta_batch": 16,
        },
    },
}
DEFAULT_PRESET: dict[str, Any] = {"meta_steps": 300, "tasks": 32, "configs": 64, "train": {}}


def _setting(family: str, args: argparse.Namespace, key: str) -> Any:
    value = getattr(args, key)
    return PRESETS.get(family, DEFAULT_PRESET)[key] if value is None else value


def _train_config(family: str, args: argparse.Namespace) -> Any:
    """The meta-training config of ``family``'s checkpoint when no ``--meta`` is given."""
    from raymeta.core.train import MetaTrainConfig

    return MetaTrainConfig(
        family=family,
        steps=_setting(family, args, "meta_steps"),
        val_tasks=20,
        seed=args.seed,
        **PRESETS.get(family, DEFAULT_PRESET)["train"],
    )


def _checkpoint(family: str, args: argparse.Namespace) -> Any:
    from raymeta.core.checkpoint import load_meta_checkpoint
    from raymeta.core.train import meta_train

    if args.meta:
        return load_meta_checkpoint(args.meta)
    return meta_train(_train_config(family, args)).to_checkpoint()


def bench_family(family: str, args: argparse.Namespace) -> dict[str, Any]:
    from raymeta.finetune import fit_priors
    from raymeta.finetune.evaluate import evaluate_configs
    from raymeta.finetune.fit import val_tasks
    from raymeta.priors import broad_prior, normalised_regret
    from raymeta.priors.portfolio import capped
    from raymeta.tasks import make_family

    t0 = time.perf_counter()
    ckpt = _checkpoint(family, args)
    meta_s = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    n_tasks, n_configs = _setting(family, args, "tasks"), _setting(family, args, "configs")
    pr = fit_priors(ckpt, n_tasks=n_tasks, n_configs=n_configs, seed=args.seed)
    fit_s, fit_cpu = time.perf_counter() - t0, time.process_time() - c0
    tasks = val_tasks(make_family(ckpt.family), args.test_tasks, split="test")
    rng = np.random.default_rng(args.seed + 1)
    ref = broad_prior(pr.space).sample(args.reference, rng)
    learned = [pr.learned.sample(args.samples, rng) for _ in range(args.draws)]
    broad = [broad_prior(pr.space).sample(args.samples, rng) for _ in range(args.draws)]
    configs = ref + [c for d in learned for c in d] + [c for d in broad for c in d] + pr.portfolio
    t0 = time.perf_counter()
    table = evaluate_configs(ckpt, tasks, configs, seed=args.seed + 2)
    eval_s = time.perf_counter() - t0
    regret = normalised_regret(table.final, cap=table.init_loss)
    n_ref, s = args.reference, args.samples

    def best_of(offset: int, draws: int) -> float:
        return float(
            np.mean(
                [
                    regret[:, offset + d * s : offset + (d + 1) * s].min(axis=1).mean()
                    for d in range(draws)
                ]
            )
        )

    learned_r = best_of(n_ref, args.draws)
    broad_r = best_of(n_ref + args.draws * s, args.draws)
    port0 = n_ref + 2 * args.draws * s
    # diverged (NaN/inf) or worse-than-init runs count as the meta-init's loss, as in the regret
    losses = capped(table.final, table.init_loss)
    beats = float(np.mean(losses[:, port0] < np.median(losses[:, :n_ref], axis=1)))
    return {
        "family": family,
        "test_tasks": len(tasks),
        "fit_tasks": n_tasks,
        "fit_configs": n_configs,
        "learned_regret": learned_r,
        "broad_regret": broad_r,
        "ratio": learned_r / broad_r if broad_r > 0 else float("nan"),
        "portfolio1_regret": float(regret[:, port0].mean()),
        "portfolioK_regret": float(regret[:, port0:].min(axis=1).mean()),
        "portfolio1_beats_median": beats,
        "mean_test_loss_portfolio1": float(losses[:, port0].mean()),
        "mean_test_loss_broad_median": float(np.median(losses[:, :n_ref], axis=1).mean()),
        "fit_seconds": fit_s,
        "fit_cpu_seconds": fit_cpu,
        "meta_train_seconds": meta_s,
        "eval_seconds": eval_s,
        "priors": pr.to_dict(),
    }


def format_rows(rows: list[dict[str, Any]], samples: int) -> str:
    head = (
        f"{'family':<10} {'learned@' + str(samples):>10} {'broad@' + str(samples):>9} {'ratio':>6} {'<=0.5':>5} "
        f"{'port#1':>7} {'port@K':>7} {'#1>med':>7} {'>=0.8':>5} {'fit s':>7} {'fit cpu s':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['family']:<10} {r['learned_regret']:>10.3f} {r['broad_regret']:>9.3f} {r['ratio']:>6.2f} "
            f"{'yes' if r['ratio'] <= 0.5 else 'NO':>5} {r['portfolio1_regret']:>7.3f} {r['portfolioK_regret']:>7.3f} "
            f"{r['portfolio1_beats_median']:>7.0%} {'yes' if r['portfolio1_beats_median'] >= 0.8 else 'NO':>5} "
            f"{r['fit_seconds']:>7.1f} {r['fit_cpu_seconds']:>9.1f}"
        )
    lines.append(
        "regret = mean normalised regret of the best config (lower is better); fit < 120 s required on sinusoid"
    )
    return "\n".join(lines)


def check_sizes(args: argparse.Namespace) -> None:
    """The evaluation's size within a fit's limits, before the meta-training and the fit: every
    held-out task fine-tunes the reference pool, both priors' draws and the portfolio (a
    size past them was a MemoryError or an endless evaluation after both had run)."""
    from raymeta import checks
    from raymeta.errors import ConfigError
    from raymeta.finetune.fit import MAX_FIT_RUNS, MAX_TASKS, PriorFitConfig

    checks.integer("--test-tasks", args.test_tasks, 1, MAX_TASKS)
    per_task = args.reference + 2 * args.draws * args.samples + PriorFitConfig.portfolio_size
    runs = args.test_tasks * per_task
    if runs > MAX_FIT_RUNS:
        raise ConfigError(
            f"{args.test_tasks} test tasks x {per_task:,} configs (--reference + 2 x --draws x "
            f"--samples + the portfolio) = {runs:,} fine-tuning runs, more than the "
            f"{MAX_FIT_RUNS:,} an evaluation may take (lower --test-tasks, --reference, --draws "
            "or --samples)"
        )


def check_families(families: list[str], args: argparse.Namespace) -> None:
    """Every family's meta-training config and priors fit built before the first family runs:
    an unknown second ``--family``, or ``--tasks`` x ``--configs`` past a fit's limit, was
    refused only after a family's meta-training (and, for the second family, its whole
    benchmark) had run."""
    from raymeta.finetune.fit import PriorFitConfig

    for fam in families:
        if not args.meta:
            _train_config(fam, args).validate()
        PriorFitConfig(
            n_tasks=_setting(fam, args, "tasks"),
            n_configs=_setting(fam, args, "configs"),
            seed=args.seed,
        )


def run(args: argparse.Namespace) -> int:
    from raymeta.errors import ConfigError

    check_sizes(args)
    families = args.family or ["sinusoid", "digits"]
    if args.meta and len(families) != 1:
        raise ConfigError("--meta needs exactly one --family")
    if args.meta:  # checked (loaded) before any work; its family names the row and presets
        from raymeta.core.checkpoint import load_meta_checkpoint

        trained_on = load_meta_checkpoint(args.meta).family.name
        if trained_on != families[0]:
            raise ConfigError(
                f"--meta {args.meta} was meta-trained on family {trained_on!r}, not --family "
                f"{families[0]!r} (give --family {trained_on})"
            )
    check_families(families, args)
    rows = []
    for fam in families:
        row = bench_family(fam, args)
        rows.append(row)
        print(
            f"[{fam}] meta-train {row['meta_train_seconds']:.0f} s, fit {row['fit_seconds']:.0f} s, eval {row['eval_seconds']:.0f} s",
            flush=True,
        )
    print(format_rows(rows, args.samples))
    if args.out:
        atomic_write_json(
            Path(args.out),
            {
                "args": {k: v for k, v in vars(args).items() if k not in ("func", "_parser")},
                "rows": rows,
            },
        )
    return 0 if all(r["ratio"] <= 0.5 and r["portfolio1_beats_median"] >= 0.8 for r in rows) else 1
