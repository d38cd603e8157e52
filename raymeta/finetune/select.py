"""Strategy selection: which strategy and final pick a family's new tasks should run, chosen on
meta-val tasks by the losses that matter (nested evaluation).

Why: a learned prior and a population are worth their cost only on families where they beat
the simple choices. On a 10-point regression family the population's lowest-val pick lost to
one default fine-tune of the meta-init; on class-disjoint images the learned prior lost to the
broad space (issue 15). So ``raymeta priors fit`` ends by running every arm of a portfolio on
meta-val tasks, each as a whole population exactly as ``raymeta tune`` and sweeps would, and
scores every final pick (``raymeta.finetune.picks``) on those tasks' **test** splits, which no
member and no pick ever saw: the rule that picks the final model is scored too, not only the
configs.

The arms: the fixed default fine-tune of every candidate (``meta+fixed-default``), a
learned-prior and a broad-space PBT population from the meta-init, and a broad PBT population
from scratch (ignore the meta-init), each with every final pick that applies (``soup`` needs a
shared init and more than one member). The default fine-tune of the best init is always an arm,
so the chosen strategy is never worse than it on meta-val by more than ``TOLERANCE``. The rule:
among the arms whose mean test loss is within ``TOLERANCE`` (5%) of the lowest, the one with
the best mean per-task rank. Why both: losses are heavy-tailed across tasks (on sinusoid a few
high-amplitude tasks make most of the mean), so the mean alone follows a handful of tasks, and
ranks alone would accept a strategy that wins many tasks by a little and loses a few by a lot.
``priors.json`` records the whole table (mean, 95% interval, median, win
rate against the chosen arm), the margin to the runner-up and to the default fine-tune, and one
line saying why, which ``raymeta tune`` prints when it runs ``auto``.

The arms run on meta-val tasks after the ones the priors were fitted on where the family has
them (no double use of the same tasks); a family with too few meta-val tasks reuses the fitted
ones, and the record says so (``tasks_disjoint``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from raymeta.core.checkpoint import MetaCheckpoint
from raymeta.finetune.picks import PICKS
from raymeta.finetune.run import run_strategy
from raymeta.finetune.strategy import Strategy
from raymeta.priors.artifact import Priors
from raymeta.results.summary import mean_ci95
from raymeta.tasks import Task

SELECT_TASKS = 16  # meta-val tasks the arms run on
SELECT_POPULATION = 8  # members of each population arm (tune's default trials x members)
REPORTS = 4  # evaluations per member (tune's default reports)
METRIC = "test_loss"
TOLERANCE = 0.05  # relative slack on the lowest mean loss within which ranks decide


@dataclass(frozen=True)
class Arm:
    """One strategy of the portfolio (``candidate``: whose fixed default fine-tune)."""

    strategy: Strategy
    candidate: str | None = None

    def picks(self, population: int) -> tuple[str, ...]:
        shared_init = self.strategy.init == "meta" and not self.strategy.fixed and population > 1
        return tuple(p for p in PICKS if p != "soup" or shared_init)

    def name(self, pick: str, several: bool) -> str:
        s = Strategy(self.strategy.init, self.strategy.prior, self.strategy.scheduler, pick).name
        return f"{s}[{self.candidate}]" if several and self.candidate else s


def arms(ckpt: MetaCheckpoint, learned: bool = True) -> list[Arm]:
    """The portfolio of strategies (module docstring)."""
    out = [Arm(Strategy("meta", "fixed-default"), c) for c in ckpt.candidates]
    if learned:
        out.append(Arm(Strategy("meta", "learned", "pbt")))
    out += [Arm(Strategy("meta", "broad", "pbt")), Arm(Strategy("scratch", "broad", "pbt"))]
    return out


def run_arm(
    ckpt: MetaCheckpoint,
    priors: Priors | None,
    arm: Arm,
    task: Task,
    *,
    population: int,
    steps: int,
    interval: int,
    seed: int,
) -> dict[str, dict[str, float]]:
    """Run one arm on one task; returns pick -> test metrics and the member-steps spent."""
    res = run_strategy(
        ckpt,
        arm.strategy,
        task,
        population=population,
        steps=steps,
        interval=interval,
        seed=seed,
        rng=np.random.default_rng([seed, 23]),
        priors=priors,
        candidate=arm.candidate or next(iter(ckpt.candidates)),
        picks=arm.picks(1 if arm.strategy.fixed else population),
    )
    spent = res.curves.member_steps_total
    return {
        rule: {**pk.test, "member_steps": float(spent + pk.extra_steps)}
        for rule, pk in res.picks.items()
    }


def select_strategy(
    ckpt: MetaCheckpoint,
    priors: Priors | None,
    tasks: Sequence[Task],
    *,
    population: int = SELECT_POPULATION,
    steps: int = 100,
    interval: int | None = None,
    seed: int = 0,
    tasks_disjoint: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Run every arm on every task and choose (module docstring); returns the record stored
    as ``priors.json``'s ``selection``."""
    interval = interval or max(1, math.ceil(steps / REPORTS))
    portfolio = arms(ckpt, learned=priors is not None)
    several = len(ckpt.candidates) > 1
    losses: dict[str, list[float]] = {}
    cost: dict[str, list[float]] = {}
    meta: dict[str, tuple[Arm, str]] = {}
    total, done = len(portfolio) * len(tasks), 0
    for t, task in enumerate(tasks):
        for arm in portfolio:
            per_pick = run_arm(
                ckpt,
                priors,
                arm,
                task,
                population=1 if arm.strategy.fixed else population,
                steps=steps,
                interval=interval,
                seed=seed + t,
            )
            for rule, m in per_pick.items():
                name = arm.name(rule, several)
                meta[name] = (arm, rule)
                v = m[METRIC]
                losses.setdefault(name, []).append(v if math.isfinite(v) else math.inf)
                cost.setdefault(name, []).append(m["member_steps"])
            done += 1
            if progress is not None:
                progress(done, total)
    record = choose({k: np.array(v) for k, v in losses.items()}, meta)
    arm, rule = meta[record["chosen_label"]]
    record.update(
        {
            "metric": METRIC,
            "tasks": len(tasks),
            "tasks_disjoint": tasks_disjoint,
            "population": population,
            "steps_per_member": steps,
            "interval": interval,
            "seed": seed,
            "default_candidate": _best_default(losses, meta),
            "candidate": arm.candidate if arm.strategy.fixed else None,
        }
    )
    for row in record["table"]:
        row["member_steps"] = float(np.mean(cost[row["label"]]))
    return record


def _best_default(losses: Mapping[str, list[float]], meta: Mapping[str, tuple[Arm, str]]) -> str:
    """The candidate whose fixed default fine-tune (its best pick) had the lowest mean loss."""
    scored = [
        (_mean(v), meta[k][0].candidate or "")
        for k, v in losses.items()
        if meta[k][0].strategy.fixed
    ]
    return min(scored)[1]


def _mean(v: Sequence[float] | np.ndarray) -> float:
    a = np.asarray(v, dtype=np.float64)
    return float(a.mean()) if np.isfinite(a).all() else math.inf


def mean_ranks(losses: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Mean per-task rank of each arm (1 = lowest loss; ties share their average rank)."""
    names = list(losses)
    table = np.stack([np.asarray(losses[n], dtype=np.float64) for n in names])  # [arms, tasks]
    ranks = np.zeros_like(table)
    for t in range(table.shape[1]):
        col = table[:, t]
        for i in range(len(names)):
            ranks[i, t] = 1 + (col < col[i]).sum() + 0.5 * ((col == col[i]).sum() - 1)
    return {n: float(ranks[i].mean()) for i, n in enumerate(names)}


def choose(
    losses: Mapping[str, np.ndarray],
    meta: Mapping[str, tuple[Arm, str]],
    tolerance: float = TOLERANCE,
) -> dict[str, Any]:
    """Among the arms x picks whose mean loss is within ``tolerance`` of the lowest, the one
    with the best mean rank (ties: the lower mean, then the portfolio's order: fixed defaults
    first), with the table and the margins."""
    names = list(losses)
    means = {n: _mean(losses[n]) for n in names}
    ranks = mean_ranks(losses)
    low = min(means.values())
    bar = low + tolerance * abs(low) if math.isfinite(low) else math.inf
    eligible = [i for i, n in enumerate(names) if means[n] <= bar]
    pick = min(eligible, key=lambda i: (ranks[names[i]], means[names[i]], i))
    order = [pick] + sorted(
        (i for i in range(len(names)) if i != pick), key=lambda i: (means[names[i]], i)
    )
    best = names[pick]
    ref = losses[best]
    table = []
    for i in order:
        name = names[i]
        v = losses[name]
        finite = v[np.isfinite(v)]
        mean, half = mean_ci95(finite)
        table.append(
            {
                "label": name,
                "strategy": meta[name][0].strategy.name,
                "pick": meta[name][1],
                "mean": _mean(v),
                "ci95": half,
                "rank": ranks[name],
                "median": float(np.median(v)),
                "failed": int((~np.isfinite(v)).sum()),
                "win_rate_vs_chosen": _win_rate(v, ref),
            }
        )
    runner = names[order[1]] if len(order) > 1 else best
    defaults = [n for n in names if meta[n][0].strategy.fixed]
    simple = min(defaults, key=lambda n: _mean(losses[n])) if defaults else best
    margin = _paired(ref, losses[runner])
    vs_default = _paired(ref, losses[simple])
    chosen = meta[best][0].strategy
    strat = Strategy(chosen.init, chosen.prior, chosen.scheduler, meta[best][1])
    why = (
        f"on {len(ref)} meta-val tasks {best} had the best mean rank {ranks[best]:.2f} of "
        f"{len(names)} among those within {tolerance:.0%} of the lowest mean test loss "
        f"{low:.4g}: mean {_mean(ref):.4g} (median {float(np.median(ref)):.4g}); next {runner} "
        f"{_mean(losses[runner]):.4g}, paired difference {margin['diff']:+.3g} "
        f"± {margin['ci95']:.2g} (95%)"
    )
    if simple != best:
        why += (
            f"; it beat the default fine-tune {simple} on {vs_default['wins']:g} of "
            f"{len(ref)} tasks (difference {vs_default['diff']:+.3g} ± {vs_default['ci95']:.2g})"
        )
    return {
        "chosen": strat.name,
        "chosen_label": best,
        "why": why,
        "runner_up": runner,
        "tolerance": tolerance,
        "margin": margin,
        "vs_default": {"label": simple, **vs_default},
        "table": table,
    }


def _win_rate(a: np.ndarray, b: np.ndarray) -> float:
    """Share of tasks on which ``a`` has the lower loss, ties counted half."""
    return float(((a < b).sum() + 0.5 * (a == b).sum()) / max(len(a), 1))


def _paired(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Mean paired difference a - b over tasks with its 95% half-width, and a's wins."""
    d = a - b
    d = d[np.isfinite(d)]
    mean, half = mean_ci95(d) if d.size else (math.nan, math.nan)
    return {
        "diff": mean,
        "ci95": half,
        "wins": float((a < b).sum() + 0.5 * (a == b).sum()),
        "win_rate": _win_rate(a, b),
    }
