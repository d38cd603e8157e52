"""Normalised regret and greedy portfolios (auto-sklearn 2 style zero-shot configurations).

Regret is normalised per task so tasks with large and small losses count equally: losses are
first capped at a reference (the meta-init's loss without fine-tuning: a diverged run is no worse
than not training), then min-max scaled over the configurations evaluated on that task.
"""

from __future__ import annotations

import numpy as np

from raymeta.errors import DataError


def capped(losses: np.ndarray, cap: np.ndarray) -> np.ndarray:
    """Losses with diverged or worse-than-init runs counted as the meta-init's loss (``cap``)."""
    y = np.asarray(losses, dtype=np.float64)
    c = np.broadcast_to(np.asarray(cap, dtype=np.float64), y.shape)
    return np.where(np.isfinite(y), np.minimum(y, c), c)


def normalised_regret(losses: np.ndarray, cap: np.ndarray | None = None) -> np.ndarray:
    """``losses`` [tasks, configs] -> regret in [0, 1] per task (0 = best config of that task).

    Non-finite losses become ``cap`` (broadcast to ``losses``) or, without one, the task's worst
    finite loss.
    """
    y = np.asarray(losses, dtype=np.float64)
    if y.ndim != 2 or y.shape[1] < 1:
        raise DataError(f"regret needs a [tasks, configs] table, got shape {y.shape}")
    if cap is not None:
        y = capped(y, cap)
    finite = np.where(np.isfinite(y), y, -np.inf).max(axis=1, keepdims=True)
    y = np.where(np.isfinite(y), y, finite)
    lo, hi = y.min(axis=1, keepdims=True), y.max(axis=1, keepdims=True)
    span = np.where(hi > lo, hi - lo, 1.0)
    return np.nan_to_num((y - lo) / span, nan=1.0, posinf=1.0, neginf=0.0)


def portfolio_step(regret: np.ndarray, current: np.ndarray, exclude: set[int]) -> int:
    """The config that most lowers mean-over-tasks of the per-task best regret (lowest index on ties)."""
    scores = np.minimum(current[:, None], regret).mean(axis=0)
    if exclude:
        scores[list(exclude)] = np.inf
    return int(np.argmin(scores))


def greedy_portfolio(regret: np.ndarray, k: int, first: np.ndarray | None = None) -> list[int]:
    """Indices of ``k`` configs chosen greedily to minimise mean normalised regret across tasks.

    ``first`` (bool per config) restricts the first pick, the config a user runs alone, to the
    marked configs (see ``refine.safe_mask``); later picks may be any config.
    """
    r = np.asarray(regret, dtype=np.float64)
    if r.ndim != 2:
        raise DataError(f"portfolio needs a [tasks, configs] table, got shape {r.shape}")
    if first is not None and (np.shape(first) != (r.shape[1],) or not np.any(first)):
        raise DataError("portfolio: the first-pick mask needs one entry per config, one set")
    chosen: list[int] = []
    current = np.full(r.shape[0], np.inf)
    for i in range(min(int(k), r.shape[1])):
        barred = (
            set(np.nonzero(~np.asarray(first, dtype=bool))[0].tolist())
            if i == 0 and first is not None
            else set()
        )
        j = portfolio_step(r, current, set(chosen) | barred)
        chosen.append(j)
        current = np.minimum(current, r[:, j])
    return chosen


def portfolio_curve(regret: np.ndarray, chosen: list[int]) -> list[float]:
    """Mean over tasks of the best regret among the first 1..k portfolio configs."""
    r = np.asarray(regret, dtype=np.float64)
    best = np.minimum.accumulate(r[:, chosen], axis=1)
    return [float(v) for v in best.mean(axis=0)]
