"""Fit priors to an evaluation table: hyperparameter priors, a portfolio, model probabilities.

The pure statistics of ``raymeta priors fit``; the driver that fine-tunes configs on
meta-validation tasks to fill the table is ``raymeta.finetune.fit.fit_priors``.

The recipe follows Syne Tune's quantile-based transfer (fit to each task's top quantile), with
shrinkage toward the broad space so tasks unlike the meta-val ones are never ruled out, plus
auto-sklearn 2's greedy portfolio and Quick-Tune-style model selection from per-task winners.
On top of that factorised prior sits a joint kernel mixture over whole good configs whose
weights minimise the expected best-of-n regret (``joint.py``); it carries most of the mass.
The portfolio and the joint weights are chosen on fresh-seed re-runs of every config, and the
portfolio's first pick must improve on the meta-init on most tasks (``refine.py``).

Constants were picked by measurement on sinusoid (1000 MAML steps, 32 val x 64 configs, scored
best-of-8 on 32 meta-test tasks, harness in BENCHMARKS.md): factorised only 0.23 best-of-8
regret; joint with top-8 uniform weights 0.22; best-of-8 weights 0.17; plus a second CEM round
0.15 (bandwidth 0.0001 / 0.03 / 0.08: 0.144 / 0.153 / 0.164, 0.03 kept so that samples are not
mere copies of the centres); broad space 0.37.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from raymeta.errors import ConfigError
from raymeta.priors.dists import MIN_STD, CategoricalDist, Dist, NumericDist
from raymeta.priors.joint import fit_joint
from raymeta.priors.portfolio import greedy_portfolio, normalised_regret, portfolio_curve
from raymeta.priors.prior import Conditional, Prior
from raymeta.priors.refine import SAFE_RATE, safe_mask
from raymeta.priors.space import Categorical, SearchSpace
from raymeta.priors.table import EvalTable

MIN_CONFIGS = 4  # configs per round at least (``round_sizes``)
STD_FLOOR = 0.02  # on the unit coordinate: never collapse a prior onto a single value
SHRINK_TASKS = 0.5  # pseudo-count: tasks' worth of broad-space evidence (weight n / (n + this))
CONDITION_ON = "optimizer"  # numeric params get a sub-prior per value of this categorical
QUANTILE = 0.05  # top fraction of each task's configs the priors fit
ROUNDS = 2  # config batches: broad first, then from the prior fitted so far
MIN_BRANCH = 3  # top configs a sub-prior needs; with fewer the branch uses the pooled fit
JOINT_SHRINK = 1.5  # pseudo-count: joint weight n_tasks / (n_tasks + this), 0.955 at 32 tasks
BANDWIDTH = 0.03  # joint kernel width on each unit coordinate
KEEP = 0.95  # probability that a joint sample keeps its centre's categorical value
BEST_OF = 8  # the joint's centre weights minimise the expected best regret of this many draws


def fit_numeric(units: np.ndarray, n_tasks: int, shrink: float = SHRINK_TASKS) -> NumericDist:
    """Truncated normal on the pooled top-quantile unit values, mixed with the uniform.

    The uniform's weight ``shrink / (n_tasks + shrink)`` is a pseudo-count: it fades as evidence
    from more tasks accumulates, yet never reaches zero (no broad-space value is ruled out).
    """
    mean = float(np.clip(units.mean(), 0.0, 1.0))
    std = float(max(units.std(), STD_FLOOR, MIN_STD))
    weight = n_tasks / (n_tasks + shrink)
    return NumericDist(weight=weight, mean=mean, std=std)


def fit_categorical(values: list[Any], choices: tuple[Any, ...]) -> CategoricalDist:
    """Additively smoothed frequencies (at least 2% of the evidence per choice)."""
    alpha = max(1.0, 0.02 * len(values))
    counts = np.array([sum(v == c for v in values) for c in choices], dtype=np.float64) + alpha
    return CategoricalDist(tuple(float(p) for p in counts / counts.sum()))


def model_probabilities(
    losses: np.ndarray, models: list[str], candidates: list[str]
) -> dict[str, float]:
    """P(model) = smoothed share of tasks on which the model's best config wins."""
    wins = dict.fromkeys(candidates, 1.0)
    arr = np.array(models)
    for row in losses:
        best = {
            m: np.nanmin(np.where(arr == m, row, np.inf)) for m in candidates if (arr == m).any()
        }
        wins[min(best, key=lambda m: best[m])] += 1.0
    total = sum(wins.values())
    return {m: w / total for m, w in wins.items()}


def fit_conditional(
    space: SearchSpace,
    top: list[tuple[int, dict[str, Any]]],
    on: str,
    pooled: dict[str, Dist],
    shrink: float,
) -> Conditional | None:
    """Per-choice numeric sub-priors of ``on``, each fitted to the top configs with that choice.

    A choice backed by fewer than ``MIN_BRANCH`` top configs keeps the pooled fit (its sub-prior
    is simply absent). The shrinkage counts the tasks that contributed to the branch.
    """
    parent = space.params.get(on)
    if not isinstance(parent, Categorical) or len(parent.choices) < 2:
        return None
    numeric = [p for p in space if not isinstance(p, Categorical)]
    out: dict[Any, dict[str, NumericDist]] = {}
    for choice in parent.choices:
        branch = [(t, c) for t, c in top if c[on] == choice]
        if len(branch) < MIN_BRANCH:
            continue
        n_t = len({t for t, _ in branch})
        out[choice] = {
            p.name: fit_numeric(
                np.array([p.to_unit(float(c[p.name])) for _, c in branch]), n_t, shrink
            )
            for p in numeric
            if isinstance(pooled.get(p.name), NumericDist)
        }
    return Conditional(on, out) if out else None


def fit_from_table(
    space: SearchSpace,
    configs: list[dict[str, Any]],
    table: EvalTable,
    quantile: float,
    portfolio_size: int,
    shrink: float = SHRINK_TASKS,
    condition_on: str | None = CONDITION_ON,
    best_of: int | None = BEST_OF,
    selection: np.ndarray | None = None,
    safe_rate: float | None = SAFE_RATE,
) -> tuple[Prior, list[dict[str, Any]], dict[str, float], dict[str, Any]]:
    """The pure fitting step on an evaluated [tasks, configs] table (``best_of=None``: no joint
    component, the factorised prior alone).

    ``selection`` ([tasks, configs] losses, e.g. the mean of fresh-seed re-runs, see
    ``refine.py``) replaces the table's scores for choosing the portfolio and the joint's
    centre weights; the factorised prior always fits the table's top quantile. ``safe_rate``
    restricts the portfolio's first pick to configs that improve on the meta-init on that share
    of tasks (``refine.safe_mask``; None: no restriction).
    """
    regret = normalised_regret(table.score, cap=table.init_loss)
    n_t, n_c = regret.shape
    k = max(2, math.ceil(quantile * n_c))
    order = np.argsort(regret, axis=1, kind="stable")[:, :k]
    top = [(t, configs[j]) for t, row in enumerate(order) for j in row]
    top_cfgs = [c for _, c in top]
    candidates = [str(c) for c in space["model"].choices] if "model" in space else []  # type: ignore[union-attr]
    model_probs = (
        model_probabilities(table.score, [str(c.get("model")) for c in configs], candidates)
        if candidates
        else {}
    )
    dists: dict[str, Dist] = {}
    for p in space:
        if p.name == "model" and model_probs:
            dists[p.name] = CategoricalDist(tuple(model_probs[str(c)] for c in p.choices))  # type: ignore[union-attr]
        elif isinstance(p, Categorical):
            dists[p.name] = fit_categorical([c[p.name] for c in top_cfgs], p.choices)
        else:
            dists[p.name] = fit_numeric(
                np.array([p.to_unit(float(c[p.name])) for c in top_cfgs]), n_t, shrink
            )
    cond = fit_conditional(space, top, condition_on, dists, shrink) if condition_on else None
    sel_losses = table.score if selection is None else np.asarray(selection, dtype=np.float64)
    if sel_losses.shape != table.score.shape:
        raise ConfigError(
            f"priors: selection table {sel_losses.shape} does not match {table.score.shape}"
        )
    sel = regret if selection is None else normalised_regret(sel_losses, cap=table.init_loss)
    first = None if safe_rate is None else safe_mask(sel_losses, table.init_loss, safe_rate)
    chosen = greedy_portfolio(sel, portfolio_size, first)
    joint = (
        fit_joint(space, configs, sel, n_t / (n_t + JOINT_SHRINK), BANDWIDTH, KEEP, best_of)
        if best_of
        else None
    )
    info = {
        "top_k": k,
        "shrink": shrink,
        "condition_on": cond.on if cond is not None else None,
        "best_of": best_of,
        "portfolio_regret": portfolio_curve(sel, chosen),
        "safe_rate": safe_rate,
        "first_pick_safe_configs": int(first.sum()) if first is not None else n_c,
        "broad_mean_regret": float(regret.mean()),
        "curve_steps": table.steps,
        "mean_val_curve": [
            float(v)
            for v in np.nanmean(np.minimum(table.curves, table.init_loss[:, :, None]), axis=(0, 1))
        ],
    }
    return Prior(space, dists, cond, joint), [dict(configs[j]) for j in chosen], model_probs, info


def round_sizes(n_configs: int, rounds: int) -> list[int]:
    """Configs per round: equal shares (the first takes the remainder), one round if too few."""
    rounds = max(1, min(int(rounds), n_configs // MIN_CONFIGS))
    base, extra = divmod(n_configs, rounds)
    return [base + extra] + [base] * (rounds - 1)
