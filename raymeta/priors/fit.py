"""Fit priors from meta-validation tasks: hyperparameter priors, a portfolio, model probabilities.

The recipe follows Syne Tune's quantile-based transfer (fit to each task's top quantile), with
shrinkage toward the broad space so tasks unlike the meta-val ones are never ruled out, plus
auto-sklearn 2's greedy portfolio and Quick-Tune-style model selection from per-task winners.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from raymeta.core.checkpoint import MetaCheckpoint
from raymeta.errors import ConfigError, DataError, RaymetaError
from raymeta.priors.artifact import VERSION, Priors
from raymeta.priors.evaluate import EvalTable, evaluate_configs
from raymeta.priors.portfolio import greedy_portfolio, normalised_regret, portfolio_curve
from raymeta.priors.prior import MIN_STD, CategoricalDist, Dist, NumericDist, Prior, broad_prior
from raymeta.priors.space import Categorical, SearchSpace, broad_space
from raymeta.tasks import Task, TaskFamily, make_family

MIN_TASKS, MIN_CONFIGS = 2, 4
STD_FLOOR = 0.05  # on the unit coordinate: never collapse a prior onto a single value
BROAD_FLOOR = 0.1  # the broad space always keeps at least this much mass
SHRINK_TASKS = 2.0  # pseudo-tasks of broad-space evidence


def val_tasks(family: TaskFamily, n: int, split: str = "val") -> list[Task]:
    """The first ``n`` fixed tasks of a meta-split; a family without them is a one-line error."""
    out = []
    for i in range(n):
        try:
            out.append(family.task(split, i))  # type: ignore[arg-type]
        except (RaymetaError, IndexError, KeyError) as exc:
            have = f"only {i}" if i else "no"
            raise DataError(
                f"family {family.name!r} has {have} meta-{split} tasks ({n} requested): {exc}"
            ) from None
    return out


def fit_numeric(units: np.ndarray, n_tasks: int) -> NumericDist:
    """Truncated normal on the pooled top-quantile unit values, mixed with the uniform."""
    mean = float(np.clip(units.mean(), 0.0, 1.0))
    std = float(max(units.std(), STD_FLOOR, MIN_STD))
    weight = (1.0 - BROAD_FLOOR) * n_tasks / (n_tasks + SHRINK_TASKS)
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


def fit_from_table(
    space: SearchSpace,
    configs: list[dict[str, Any]],
    table: EvalTable,
    quantile: float,
    portfolio_size: int,
) -> tuple[Prior, list[dict[str, Any]], dict[str, float], dict[str, Any]]:
    """The pure fitting step on an evaluated [tasks, configs] table."""
    regret = normalised_regret(table.final, cap=table.init_loss)
    n_t, n_c = regret.shape
    k = max(2, math.ceil(quantile * n_c))
    top = np.argsort(regret, axis=1, kind="stable")[:, :k]
    top_cfgs = [configs[j] for row in top for j in row]
    candidates = [str(c) for c in space["model"].choices] if "model" in space else []  # type: ignore[union-attr]
    model_probs = (
        model_probabilities(table.final, [str(c.get("model")) for c in configs], candidates)
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
                np.array([p.to_unit(float(c[p.name])) for c in top_cfgs]), n_t
            )
    chosen = greedy_portfolio(regret, portfolio_size)
    info = {
        "top_k": k,
        "portfolio_regret": portfolio_curve(regret, chosen),
        "broad_mean_regret": float(regret.mean()),
        "curve_steps": table.steps,
        "mean_val_curve": [
            float(v)
            for v in np.nanmean(np.minimum(table.curves, table.init_loss[:, :, None]), axis=(0, 1))
        ],
    }
    return Prior(space, dists), [dict(configs[j]) for j in chosen], model_probs, info


def fit_priors(
    ckpt: MetaCheckpoint,
    n_tasks: int = 32,
    n_configs: int = 64,
    seed: int = 0,
    quantile: float = 0.15,
    portfolio_size: int = 8,
    max_steps: int = 100,
    chunk_size: int = 4096,
    progress: Callable[[int, int], None] | None = None,
) -> Priors:
    """Fine-tune ``n_configs`` broad-space configs on ``n_tasks`` meta-val tasks and fit priors."""
    if n_tasks < MIN_TASKS:
        raise ConfigError(f"priors: need at least {MIN_TASKS} meta-val tasks to fit, got {n_tasks}")
    if n_configs < MIN_CONFIGS:
        raise ConfigError(f"priors: need at least {MIN_CONFIGS} configs to fit, got {n_configs}")
    if not 0.0 < quantile <= 1.0:
        raise ConfigError(f"priors: quantile must be in (0, 1], got {quantile}")
    if portfolio_size < 1:
        raise ConfigError(f"priors: portfolio size must be >= 1, got {portfolio_size}")
    t0 = time.perf_counter()
    family = make_family(ckpt.family)
    tasks = val_tasks(family, n_tasks)
    space = broad_space(
        list(ckpt.candidates), max_batch=int(tasks[0].x_train.shape[0]), max_steps=max_steps
    )
    configs = broad_prior(space).sample(n_configs, np.random.default_rng(seed))
    table = evaluate_configs(ckpt, tasks, configs, seed, chunk_size=chunk_size, progress=progress)
    learned, portfolio, model_probs, info = fit_from_table(
        space, configs, table, quantile, portfolio_size
    )
    info |= {
        "family": ckpt.family.to_dict(),
        "n_tasks": n_tasks,
        "n_configs": n_configs,
        "seed": seed,
        "quantile": quantile,
        "objective": "val_loss",
        "fit_seconds": time.perf_counter() - t0,
    }
    return Priors(VERSION, space, learned, portfolio, model_probs, info)
