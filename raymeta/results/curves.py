"""Anytime-best curves: what a run (strategy, task, seed) had achieved after a given budget.

Why budget = member-steps summed over the run's trials: a population of 16 members that found
a good model after 100 steps each spent 1600 member-steps, and that is what it must be
compared on against a single-member baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

RunKey = tuple[str, str, int]  # (strategy, task, seed)


def higher_is_better(metric: str) -> bool:
    """Accuracy-like metrics are maximised; every loss is minimised."""
    return metric.endswith("accuracy") or metric.endswith("acc")


def validation_metric(metric: str) -> str:
    """The per-interval counterpart of a final metric: ``test_loss`` -> ``val_loss``."""
    return "val_" + metric[len("test_") :] if metric.startswith("test_") else metric


def oriented(values: np.ndarray, metric: str) -> np.ndarray:
    """Map to 'lower is better' with non-finite (diverged) values as +inf, the worst."""
    v = -values if higher_is_better(metric) else values.astype(np.float64, copy=True)
    return np.where(np.isfinite(v), v, np.inf)


@dataclass(frozen=True)
class Curve:
    """Events of one run in time order; ``best`` is oriented (lower is better)."""

    budget: np.ndarray  # cumulative member-steps over all trials of the run
    wall: np.ndarray  # seconds since the run started
    best: np.ndarray  # anytime best (running min) of the oriented validation metric

    def at(self, x: np.ndarray, axis: str = "budget") -> np.ndarray:
        """Anytime best after ``x`` budget (or seconds): +inf before the first observation."""
        xs = self.budget if axis == "budget" else self.wall
        idx = np.searchsorted(xs, x, side="right") - 1
        out = np.full(np.shape(x), np.inf)
        ok = idx >= 0
        out[ok] = self.best[idx[ok]]
        return out

    def first_reaching(self, target: float) -> tuple[float, float]:
        """(member-steps, seconds) when the anytime best first got to ``target``; inf if never."""
        hit = np.nonzero((self.best <= target) & np.isfinite(self.best))[0]
        if hit.size == 0:
            return float("inf"), float("inf")
        return float(self.budget[hit[0]]), float(self.wall[hit[0]])


def task_ids(rows: pa.Table) -> list[str]:
    """Task names, qualified as ``sweep/task`` when several sweeps are read together so that
    equal task names from different sweeps never merge into one run."""
    tasks = rows["task"].to_pylist()
    if len(rows["sweep"].unique()) <= 1:
        return tasks
    return [f"{s}/{t}" for s, t in zip(rows["sweep"].to_pylist(), tasks, strict=True)]


def run_curves(table: pa.Table, metric: str) -> dict[RunKey, Curve]:
    """Anytime-best curve of ``metric`` (a validation metric) for every run that reports it."""
    rows = table.filter(pc.equal(table["metric"], metric))
    if rows.num_rows == 0:
        return {}
    strat = rows["strategy"].to_pylist()
    task = task_ids(rows)
    seed = rows["seed"].to_pylist()
    trial = rows["trial"].to_pylist()
    step = rows["step"].to_numpy()
    wall = rows["wall_s"].to_numpy()
    value = oriented(rows["value"].to_numpy(), metric)
    groups: dict[RunKey, list[int]] = {}
    for i, key in enumerate(zip(strat, task, seed, strict=True)):
        groups.setdefault(key, []).append(i)
    curves: dict[RunKey, Curve] = {}
    for key, idx_list in groups.items():
        idx = np.asarray(idx_list)
        idx = idx[np.lexsort((step[idx], wall[idx]))]  # time order, step breaks ties
        last: dict[str, int] = {}
        budget = np.empty(idx.size, dtype=np.float64)
        total = 0
        for j, i in enumerate(idx):
            prev = last.get(trial[i], 0)
            total += max(int(step[i]) - prev, 0)
            last[trial[i]] = max(prev, int(step[i]))
            budget[j] = total
        curves[key] = Curve(
            budget=budget,
            wall=np.maximum.accumulate(wall[idx]),
            best=np.minimum.accumulate(value[idx]),
        )
    return curves
