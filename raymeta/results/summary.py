"""Per-strategy aggregation: mean, median and 95% bootstrap CI of the test metric over tasks,
normalised regret, average rank, member-steps / wall time to reach a target, pairwise win rates
and notes.

Why these: the unit of independence is the task, so each (strategy, task) is first averaged
over its seeds and the mean, its CI and the median are taken over tasks (seeds that are
identical by construction, e.g. a fixed default configuration, would otherwise count as
independent samples and shrink the CI). The CI is a seeded percentile bootstrap of the mean
(``bootstrap_ci``): losses are non-negative and heavy tailed and accuracies live in [0, 1],
and a Student-t interval (``mean_ci95``, kept for callers that want it) can leave both ranges
(a mean MSE "in [-2.7, 4.7]"); a percentile interval never leaves the range of the task
values, and the fixed seed keeps a report reproducible. The median next to the mean and the
per-task win rates show the distribution, not just its centre, and ``notes`` says when a few
tasks drive a mean difference. Regret min-max normalised per task and ranks make tasks of
different loss scales comparable; time to target is the speed-up a warm start buys (the
FSBO/piBO way of reporting it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raymeta.errors import DataError
from raymeta.results.curves import (
    Curve,
    RunKey,
    higher_is_better,
    oriented,
    qualify_tasks,
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


CI_LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
FEW_TASKS = 5  # below this a percentile bootstrap interval is noticeably too narrow
CI_KIND = "bootstrap"
CI_DESCRIPTION = (
    f"{CI_LEVEL:.0%} CI: percentile bootstrap of the mean over tasks "
    f"({BOOTSTRAP_RESAMPLES} resamples, seeded)"
)


def bootstrap_ci(
    values: Iterable[float],
    level: float = CI_LEVEL,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """(low, high) percentile-bootstrap interval of the mean; NaNs for fewer than 2 values.

    Always inside [min, max] of ``values`` (so >= 0 for a loss, inside [0, 1] for an
    accuracy) and the same for the same values (fixed ``seed``). Resampled in chunks so a
    many-task dataset stays within a few MB."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size < 2:
        return float("nan"), float("nan")
    lo_v, hi_v = float(v.min()), float(v.max())
    if lo_v == hi_v:
        return lo_v, hi_v
    rng = np.random.default_rng(seed)
    chunk = max(1, 1_000_000 // v.size)
    means = np.concatenate(
        [
            v[rng.integers(0, v.size, size=(min(chunk, resamples - i), v.size))].mean(axis=1)
            for i in range(0, resamples, chunk)
        ]
    )
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(np.clip(lo, lo_v, hi_v)), float(np.clip(hi, lo_v, hi_v))


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
        task_ids(rows, qualify_tasks(table)),
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


def _task_finals(raw: dict[RunKey, float]) -> dict[tuple[str, str], list[float]]:
    """{(strategy, task): [final value per seed]} of raw (not oriented) values, in seed order."""
    acc: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for (s, t, seed), v in raw.items():
        acc.setdefault((s, t), []).append((seed, v))
    return {k: [v for _, v in sorted(vs, key=lambda sv: sv[0])] for k, vs in acc.items()}


def _seed_invariant(per_task: list[list[float]]) -> bool:
    """True when every task with >= 2 seeds has exactly equal, finite values over its seeds
    (and at least one task has >= 2 seeds: with one seed per task nothing can be told)."""
    multi = [vs for vs in per_task if len(vs) >= 2]
    return bool(multi) and all(all(math.isfinite(v) and v == vs[0] for v in vs) for vs in multi)


def _checked_finals(table: pa.Table, metric: str) -> dict[RunKey, float]:
    if table.num_rows == 0:
        raise DataError("the results dataset holds no rows")
    metrics = set(table["metric"].unique().to_pylist())
    if metric not in metrics:
        raise DataError(f"no rows with metric {metric!r} (available: {', '.join(sorted(metrics))})")
    return final_values(table, metric)


def _median(values: list[float]) -> float | None:
    m = float(np.median(values)) if values else float("inf")
    return m if math.isfinite(m) else None


def summarise(
    table: pa.Table,
    metric: str = "test_loss",
    target: float | None = None,
    *,
    curves: dict[RunKey, Curve] | None = None,
) -> list[dict[str, Any]]:
    """One dict per strategy, best average rank first. See module docstring for the columns.

    Columns: ``n`` runs (strategy, task, seed), ``tasks``, ``seeds`` (distinct seeds);
    ``mean``, ``median`` and the 95% percentile-bootstrap interval of the mean (``ci_low``,
    ``ci_high``, ``ci_kind``; see ``bootstrap_ci``) of the final ``metric`` over tasks, each
    task's value being the mean of its
    finite seeds (a task whose seeds all diverged is left out; ``failed`` counts diverged
    runs); ``seed_invariant``: every task with >= 2 seeds gave exactly the same value on all of
    them (its seeds are no independent samples; the CI counts tasks either way).

    ``target`` is in units of the validation metric (``val_loss`` for ``test_loss``); a run
    reaches it when its anytime best validation value is <= target (>= for accuracies). With
    no target each task's target is the worst strategy's mean final best validation value on
    it, i.e. "how fast does each strategy get to where the weakest one ends". Steps and wall
    time to target are medians over runs, counting unreached runs as infinite (None if the
    median run never reached it). ``curves``: ``run_curves(table, validation_metric(metric))``
    when the caller has them already (the report draws them too).
    """
    raw = _checked_finals(table, metric)
    by_task = _task_finals(raw)
    keys = list(raw)
    oriented_final = dict(
        zip(keys, oriented(np.array([raw[k] for k in keys]), metric).tolist(), strict=True)
    )
    regret, rank = regret_and_rank(_seed_means(oriented_final))

    vmetric = validation_metric(metric)
    if curves is None:
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
        per_task = [vs for (s2, _), vs in by_task.items() if s2 == s]
        task_means = [
            float(np.mean(ok)) for vs in per_task if (ok := [v for v in vs if math.isfinite(v)])
        ]
        mean = float(np.mean(task_means)) if task_means else float("nan")
        low, high = bootstrap_ci(task_means)
        hits = [curves[k].first_reaching(task_target[k[1]]) for k in curves if k[0] == s]
        out.append(
            {
                "strategy": s,
                "n": len(vals),
                "tasks": len(per_task),
                "seeds": len({k[2] for k in runs}),
                "seed_invariant": _seed_invariant(per_task),
                "mean": mean,
                "median": float(np.median(task_means)) if task_means else float("nan"),
                "ci_low": low,
                "ci_high": high,
                "ci_kind": CI_KIND,
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


def _driven_by_few(diffs: list[float]) -> tuple[bool, int]:
    """(whether leaving out the ``k`` tasks of largest |difference| flips the sign of the mean
    difference or shrinks it by more than half, ``k``); ``k`` = min(2, (n - 1) // 2), so the
    tasks left out are always fewer than half (no check below 3 tasks)."""
    k = max(0, min(2, (len(diffs) - 1) // 2))
    full = float(np.mean(diffs)) if diffs else 0.0
    if k <= 0 or full == 0.0:
        return False, k
    rest = sorted(diffs, key=abs)[:-k]
    m = float(np.mean(rest))
    return (m * full < 0 or abs(m) < 0.5 * abs(full)), k


def win_rates(table: pa.Table, metric: str = "test_loss") -> dict[tuple[str, str], dict[str, Any]]:
    """Pairwise per-task comparison of seed-averaged final ``metric`` values, for every ordered
    pair (a, b) of strategies that share at least one task.

    Per pair: ``tasks`` both ran; ``wins`` (a better: lower loss, higher accuracy; a task where
    a seed diverged counts as worst), ``losses``, ``ties`` (exactly equal); ``rate`` = (wins +
    ties / 2) / tasks; ``mean_diff`` and ``median_diff`` of a minus b in metric units over the
    tasks where both are finite (NaN if none); ``driven_by_few``: leaving out the ``few`` (at
    most 2, always fewer than half) tasks of largest |a - b| flips the sign of the mean
    difference or shrinks it by more than half.
    """
    raw = _checked_finals(table, metric)
    by_task = _task_finals(raw)
    value: dict[str, dict[str, float]] = {}  # strategy -> task -> raw seed mean (inf/nan kept)
    for (s, t), vs in by_task.items():
        value.setdefault(s, {})[t] = float(np.mean(vs))
    names = sorted(value)
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for a in names:
        for b in names:
            common = sorted(set(value[a]) & set(value[b]))
            if a == b or not common:
                continue
            va = np.array([value[a][t] for t in common])
            vb = np.array([value[b][t] for t in common])
            oa, ob = oriented(va, metric), oriented(vb, metric)
            wins, losses = int(np.sum(oa < ob)), int(np.sum(oa > ob))
            ties = len(common) - wins - losses
            both = np.isfinite(va) & np.isfinite(vb)
            diffs = (va - vb)[both].tolist()
            driven, few = _driven_by_few(diffs)
            out[(a, b)] = {
                "wins": wins,
                "losses": losses,
                "ties": ties,
                "tasks": len(common),
                "rate": (wins + 0.5 * ties) / len(common),
                "mean_diff": float(np.mean(diffs)) if diffs else float("nan"),
                "median_diff": float(np.median(diffs)) if diffs else float("nan"),
                "driven_by_few": driven,
                "few": few,
                "diff_tasks": len(diffs),
            }
    return out


def notes(
    summary_rows: Sequence[dict[str, Any]], wins: dict[tuple[str, str], dict[str, Any]]
) -> list[str]:
    """Sentences for the report: strategies whose seeds are identical (so its CI counts tasks,
    not runs), strategies with too few tasks for a bootstrap CI to mean much, and strategy pairs whose mean difference a few tasks drive (each pair once, the
    better-ranked strategy first)."""
    out = []
    for d in summary_rows:
        if d.get("seed_invariant"):
            out.append(
                f"{d['strategy']}: seeds are identical by construction (each task gave exactly "
                f"the same value on every seed); its CI counts {d['tasks']} tasks, not {d['n']} runs"
            )
    few = [d["strategy"] for d in summary_rows if 2 <= d.get("tasks", 0) < FEW_TASKS]
    if few:
        who = "every group has" if len(few) == len(summary_rows) else f"{', '.join(few)}: have"
        out.append(
            f"{who} fewer than {FEW_TASKS} tasks; a bootstrap CI over so few understates the "
            "uncertainty (read it as the spread of the task means)"
        )
    order = [d["strategy"] for d in summary_rows]
    order += sorted({s for pair in wins for s in pair} - set(order))
    for i, a in enumerate(order):
        for b in order[i + 1 :]:
            w = wins.get((a, b))
            if w is None or not w["driven_by_few"]:
                continue
            out.append(
                f"{a} vs {b}: mean difference {w['mean_diff']:+.3g} is driven by {w['few']} of "
                f"{w['diff_tasks']} tasks (median difference {w['median_diff']:+.3g})"
            )
    return out
