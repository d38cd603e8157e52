"""Anytime-best curves: what a run (strategy, task, seed) had achieved after a given budget.

Why budget = member-steps summed over the run's trials: a population of 16 members that found
a good model after 100 steps each spent 1600 member-steps, and that is what it must be
compared on against a single-member baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
        return np.where(idx >= 0, self.best[np.maximum(idx, 0)], np.inf)

    def first_reaching(self, target: float) -> tuple[float, float]:
        """(member-steps, seconds) when the anytime best first got to ``target``; inf if never."""
        hit = np.nonzero((self.best <= target) & np.isfinite(self.best))[0]
        if hit.size == 0:
            return float("inf"), float("inf")
        return float(self.budget[hit[0]]), float(self.wall[hit[0]])


def qualify_tasks(table: pa.Table) -> bool:
    """Whether task names must be qualified as ``sweep/task``: only when some strategy appears
    in several sweeps (pooled sweeps), so that its runs from different sweeps never merge. When
    every strategy (or ``sweep/strategy`` group label) belongs to one sweep, equal task names
    are the same task, and strategies from different sweeps are compared on it."""
    if table.num_rows == 0 or len(table["sweep"].unique()) <= 1:
        return False
    pairs = table.select(["strategy", "sweep"]).group_by(["strategy", "sweep"]).aggregate([])
    return pairs.num_rows > len(pairs["strategy"].unique())


def task_ids(rows: pa.Table, qualify: bool | None = None) -> list[str]:
    """Task names, as ``sweep/task`` when ``qualify`` (default: ``qualify_tasks(rows)``; pass
    the full table's answer when ``rows`` is a part of it)."""
    tasks = rows["task"].to_pylist()
    if not (qualify_tasks(rows) if qualify is None else qualify):
        return tasks
    return [f"{s}/{t}" for s, t in zip(rows["sweep"].to_pylist(), tasks, strict=True)]


def _codes(values: list[Any]) -> tuple[np.ndarray, list[Any]]:
    """Integer code per value plus the distinct values, without a Python loop over rows."""
    arr = pa.array(values).dictionary_encode()
    names = arr.dictionary.to_pylist()
    rank = np.empty(len(names), dtype=np.int64)
    rank[sorted(range(len(names)), key=names.__getitem__)] = np.arange(len(names))
    return rank[np.asarray(arr.indices, dtype=np.int64)], sorted(names)  # codes follow name order


def _budget(runs: np.ndarray, trials: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Cumulative member-steps of each run over its events, for rows grouped by run and in
    time order inside a run: each event adds what its trial spent since the trial's highest
    step so far (a step that goes back adds nothing). One vectorised pass over all runs."""
    n = steps.size
    key = runs * (int(trials.max()) + 1) + trials  # a trial of a run
    by_trial = np.lexsort((np.arange(n), key))  # group by trial, keep time order inside
    tr, st = key[by_trial], np.maximum(steps[by_trial], 0)
    big = int(st.max()) + 1
    run_max = np.maximum.accumulate(st + tr * big) - tr * big  # running max within each trial
    prev = np.concatenate(([0], run_max[:-1]))
    prev[np.concatenate(([True], tr[1:] != tr[:-1]))] = 0  # a trial's first event starts at 0
    inc = np.empty(n, dtype=np.float64)
    inc[by_trial] = np.maximum(st - prev, 0)
    total = np.cumsum(inc)
    starts = np.flatnonzero(np.concatenate(([True], runs[1:] != runs[:-1])))
    before = np.concatenate(([0.0], total[starts[1:] - 1]))  # the total when each run starts
    return total - np.repeat(before, np.diff(np.append(starts, n)))


def run_curves(table: pa.Table, metric: str) -> dict[RunKey, Curve]:
    """Anytime-best curve of ``metric`` (a validation metric) for every run that reports it."""
    rows = table.filter(pc.equal(table["metric"], metric))
    if rows.num_rows == 0:
        return {}
    s_code, s_names = _codes(rows["strategy"].to_pylist())
    t_code, t_names = _codes(task_ids(rows, qualify_tasks(table)))
    seed = rows["seed"].to_numpy()
    trial, _ = _codes(rows["trial"].to_pylist())
    step = rows["step"].to_numpy()
    wall = rows["wall_s"].to_numpy()
    value = oriented(rows["value"].to_numpy(), metric)
    seeds, seed_code = np.unique(seed, return_inverse=True)
    combined = (s_code * len(t_names) + t_code) * len(seeds) + seed_code.reshape(-1)
    _, run = np.unique(combined, return_inverse=True)
    run = run.reshape(-1)
    order = np.lexsort((value, trial, step, wall, run))  # by run, time; ties: step, trial, value
    cuts = np.flatnonzero(np.diff(run[order])) + 1
    budget = np.split(_budget(run[order], trial[order], step[order]), cuts)
    curves: dict[RunKey, Curve] = {}
    for idx, b in zip(np.split(order, cuts), budget, strict=True):
        i = idx[0]
        curves[(s_names[s_code[i]], t_names[t_code[i]], int(seed[i]))] = Curve(
            budget=b,
            wall=np.maximum.accumulate(wall[idx]),
            best=np.minimum.accumulate(value[idx]),
        )
    return curves
