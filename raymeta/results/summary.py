"""Per-strategy aggregation: mean and 95% CI of the test metric, normalised regret, average rank,
and member-steps / wall time to reach a target.

Why these: the mean with a Student-t CI says how sure a difference is over few seeds; regret
min-max normalised per task and ranks make tasks of different loss scales comparable; time to
target is the speed-up a warm start buys (the FSBO/piBO way of reporting it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raymeta.errors import DataError
from raymeta.results.curves import (
    RunKey,
    higher_is_better,
    oriented,
    run_curves,
    task_ids,
    validation_metric,
)


def _two_sided_mass(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with integer ``df`` (Abramowitz & Stegun 26.7.3-4, exact)."""
    theta = math.atan(t / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2 == 0:
        term, total = 1.0, 1.0
        for k in range(1, df // 2):
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        return s * total
    if df == 1:
        return 2 * theta / math.pi
    term, total = 1.0, 1.0
    for k in range(1, (df - 1) // 2):
        term *= c2 * (2 * k) / (2 * k + 1)
        total += term
    return 2 / math.pi * (theta + s * math.cos(theta) * total)


def t_quantile(p: float, df: int) -> float:
    """Quantile ``p`` (> 0.5) of Student's t by bisection on the exact CDF; no scipy needed."""
    mass = 2 * p - 1
    lo, hi = 0.0, 1.0
    while _two_sided_mass(hi, df) < mass:
        hi *= 2
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _two_sided_mass(mid, df) < mass:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * hi:
            break
    return 0.5 * (lo + hi)


def mean_ci95(values: Iterable[float]) -> tuple[float, float]:
    """(mean, half-width of the two-sided 95% Student-t interval); NaN half-width for n < 2."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    if v.size < 2:
        return float(v.mean()), float("nan")
    se = float(v.std(ddof=1)) / math.sqrt(v.size)
    return float(v.mean()), t_quantile(0.975, v.size - 1) * se


def _avg_ranks(values: dict[str, float]) -> dict[str, float]:
    """Rank 1 = best (lowest); ties share the average of their ranks."""
    items = sorted(values.items(), key=lambda kv: kv[1])
    ranks: dict[str, float] = {}
    i = 0
    while i < len(items):
        j = i
        while j + 1 < len(items) and items[j + 1][1] == items[i][1]:
            j += 1
        for k in range(i, j + 1):
            ranks[items[k][0]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def regret_and_rank(
    per_task: dict[str, dict[str, float]],
) -> tuple[dict[str, float], dict[str, float]]:
    """Mean normalised regret and mean rank per strategy from {task: {strategy: oriented value}}.

    Regret on a task is (v - best) / (worst - best) over the strategies run on it (0 when all
    tie); a diverged (inf) strategy gets regret 1 and the worst rank.
    """
    regrets: dict[str, list[float]] = {}
    ranks: dict[str, list[float]] = {}
    for scores in per_task.values():
        finite = [v for v in scores.values() if math.isfinite(v)]
        best = min(finite) if finite else 0.0
        worst = max(finite) if finite else 0.0
        for s, v in scores.items():
            r = (
                1.0
                if not math.isfinite(v)
                else (0.0 if worst == best else (v - best) / (worst - best))
            )
            regrets.setdefault(s, []).append(r)
        for s, rk in _avg_ranks(scores).items():
            ranks.setdefault(s, []).append(rk)
    return (
        {s: float(np.mean(r)) for s, r in regrets.items()},
        {s: float(np.mean(r)) for s, r in ranks.items()},
    )


def final_values(table: pa.Table, metric: str) -> dict[RunKey, float]:
    """Final ``metric`` per run (strategy, task, seed): mean of its rows at the largest step."""
    rows = table.filter(pc.equal(table["metric"], metric))
    out: dict[RunKey, tuple[int, list[float]]] = {}
    cols = [
        rows["strategy"].to_pylist(),
        task_ids(rows),
        *(rows[c].to_pylist() for c in ("seed", "step", "value")),
    ]
    for s, t, seed, step, v in zip(*cols, strict=True):
        key = (s, t, seed)
        cur = out.get(key)
        if cur is None or step > cur[0]:
            out[key] = (step, [v])
        elif step == cur[0]:
            cur[1].append(v)
    return {k: float(np.mean(vs)) for k, (_, vs) in out.items()}


def _seed_means(per_run: dict[RunKey, float]) -> dict[str, dict[str, float]]:
    """{task: {strategy: mean over seeds}} of oriented values (inf if any seed diverged)."""
    acc: dict[tuple[str, str], list[float]] = {}
    for (s, t, _), v in per_run.items():
        acc.setdefault((t, s), []).append(v)
    out: dict[str, dict[str, float]] = {}
    for (t, s), vs in acc.items():
        out.setdefault(t, {})[s] = float(np.mean(vs))
    return out


def _median(values: list[float]) -> float | None:
    m = float(np.median(values)) if values else float("inf")
    return m if math.isfinite(m) else None


def summarise(
    table: pa.Table, metric: str = "test_loss", target: float | None = None
) -> list[dict[str, Any]]:
    """One dict per strategy, best average rank first. See module docstring for the columns.

    ``target`` is in units of the validation metric (``val_loss`` for ``test_loss``); a run
    reaches it when its anytime best validation value is <= target (>= for accuracies). With
    no target each task's target is the worst strategy's mean final best validation value on
    it, i.e. "how fast does each strategy get to where the weakest one ends". Steps and wall
    time to target are medians over runs, counting unreached runs as infinite (None if the
    median run never reached it).
    """
    if table.num_rows == 0:
        raise DataError("the results dataset holds no rows")
    metrics = set(table["metric"].unique().to_pylist())
    if metric not in metrics:
        raise DataError(f"no rows with metric {metric!r} (available: {', '.join(sorted(metrics))})")
    raw = final_values(table, metric)
    keys = list(raw)
    oriented_final = dict(
        zip(keys, oriented(np.array([raw[k] for k in keys]), metric).tolist(), strict=True)
    )
    regret, rank = regret_and_rank(_seed_means(oriented_final))

    vmetric = validation_metric(metric)
    curves = run_curves(table, vmetric)
    sign = -1.0 if higher_is_better(vmetric) else 1.0
    if target is not None:
        task_target = dict.fromkeys({t for _, t, _ in curves}, sign * float(target))
    else:
        final_best = {k: float(c.best[-1]) for k, c in curves.items()}
        task_target = {
            t: max((v for v in scores.values() if math.isfinite(v)), default=-math.inf)
            for t, scores in _seed_means(final_best).items()
        }

    out = []
    for s in sorted({k[0] for k in keys}):
        runs = [k for k in keys if k[0] == s]
        vals = [raw[k] for k in runs]
        finite = [v for v in vals if math.isfinite(v)]
        mean, half = mean_ci95(finite)
        hits = [curves[k].first_reaching(task_target[k[1]]) for k in curves if k[0] == s]
        out.append(
            {
                "strategy": s,
                "n": len(vals),
                "tasks": len({k[1] for k in runs}),
                "mean": mean,
                "ci95": half,
                "ci_low": mean - half,
                "ci_high": mean + half,
                "failed": len(vals) - len(finite),
                "regret": regret[s],
                "rank": rank[s],
                "steps_to_target": _median([h[0] for h in hits]),
                "wall_to_target": _median([h[1] for h in hits]),
                "reached": sum(math.isfinite(h[0]) for h in hits),
                "runs": len(hits),
            }
        )
    out.sort(key=lambda d: (d["rank"], d["strategy"]))
    return out
