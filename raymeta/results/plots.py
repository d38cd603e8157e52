"""PNG plots of a results table: the anytime best of one validation metric (``val_loss``, or
``val_accuracy`` when accuracy is compared) against member-steps and against wall time, and
the strategies' average rank over the budget.

Why medians with an interquartile band: a few diverged or lucky runs should not dominate a
curve that summarises dozens of tasks. Uses matplotlib's object API (no pyplot global state),
imported lazily so importing ``raymeta.results`` stays light.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from raymeta.errors import DataError
from raymeta.fileio import atomic_write_bytes
from raymeta.results.curves import Curve, RunKey, higher_is_better, run_curves

_STYLES = ("-", "--", "-.", ":")


def _grid(lo: float, hi: float, n: int = 200) -> tuple[np.ndarray, bool]:
    """Log-spaced when the range spans two decades or more (tiny fixed-step baselines next to
    large populations), else linear. Returns (grid, is_log)."""
    lo = max(lo, 1e-9)
    hi = max(hi, lo * (1 + 1e-9))
    if hi / lo >= 100:
        return np.geomspace(lo, hi, n), True
    return np.linspace(lo, hi, n), False


def _by_strategy(curves: dict[RunKey, Curve]) -> dict[str, list[Curve]]:
    out: dict[str, list[Curve]] = {}
    for (s, _, _), c in sorted(curves.items()):
        out.setdefault(s, []).append(c)
    return out


def _save(fig: Any, path: Path) -> Path:
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _curve_plot(groups: dict[str, list[Curve]], axis: str, metric: str, path: Path) -> Path:
    from matplotlib.figure import Figure

    sign = -1.0 if higher_is_better(metric) else 1.0

    def xs(c: Curve) -> np.ndarray:
        return c.budget if axis == "budget" else c.wall

    # A strategy's curve starts once every run has a finite value, so the median of
    # non-increasing curves never rises; runs that never got a finite value are shown as diverged.
    spans = {}
    for s, cs in groups.items():
        live = [c for c in cs if np.isfinite(c.best).any()]
        if live:
            start = max(float(xs(c)[np.argmax(np.isfinite(c.best))]) for c in live)
            spans[s] = (live, start, max(float(xs(c)[-1]) for c in cs))
    positive = [v for _, a, b in spans.values() for v in (a, b) if v > 0]
    floor = min(positive) if positive else 1.0
    use_log = bool(positive) and max(positive) / floor >= 100
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    for i, (s, cs) in enumerate(groups.items()):
        if s not in spans:
            continue
        live, start, end = spans[s]
        lo = max(start, floor) if use_log else start
        grid = (
            np.geomspace(lo, max(end, lo), 200) if use_log else np.linspace(lo, max(end, lo), 200)
        )
        vals = sign * np.stack([c.at(grid, axis) for c in live])
        q25, med, q75 = np.percentile(vals, [25, 50, 75], axis=0)
        color = f"C{i % 10}"
        diverged = len(cs) - len(live)
        label = f"{s} (n={len(cs)}" + (f", {diverged} diverged)" if diverged else ")")
        style = _STYLES[(i // 10) % 4]
        ax.plot(grid, med, style, color=color, lw=2, label=label, drawstyle="steps-post")
        ax.fill_between(grid, q25, q75, color=color, alpha=0.15, step="post")
        ax.plot(grid[-1:], med[-1:], "o", color=color, ms=6)  # end of budget; shows one-point runs
    xlabel = (
        "member-steps (summed over the run's members)"
        if axis == "budget"
        else "wall time since run start (s)"
    )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"anytime best {metric}")
    if use_log:
        ax.set_xscale("log")
    if not higher_is_better(metric):
        ax.set_yscale("log")
    what = "member-steps" if axis == "budget" else "wall time"
    ax.set_title(
        f"Anytime best {metric} vs {what}\nmedian over runs (strategy x task x seed), band = 25-75%"
    )
    ax.grid(True, which="both", alpha=0.3)
    who = "sweep/strategy" if any("/" in s for s in groups) else "strategy"
    ax.legend(
        title=f"{who} (o = end of budget)", fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1)
    )
    return _save(fig, path)


def _rank_plot(curves: dict[RunKey, Curve], metric: str, path: Path) -> Path | None:
    from matplotlib.figure import Figure

    strategies = sorted({k[0] for k in curves})
    runs = sorted({(t, seed) for _, t, seed in curves})
    complete = [r for r in runs if all((s, *r) in curves for s in strategies)]
    if len(strategies) < 2 or not complete:
        return None
    lo = min(float(c.budget[0]) for c in curves.values())
    hi = max(float(c.budget[-1]) for c in curves.values())
    grid, is_log = _grid(lo if lo > 0 else 1.0, hi)
    total = np.zeros((len(strategies), grid.size))
    for t, seed in complete:
        v = np.stack([curves[(s, t, seed)].at(grid) for s in strategies])  # inf = nothing yet
        less = (v[None, :, :] < v[:, None, :]).sum(axis=1)
        ties = (v[None, :, :] == v[:, None, :]).sum(axis=1)
        total += 1 + less + (ties - 1) / 2
    avg = total / len(complete)
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    for i, s in enumerate(strategies):
        ax.plot(
            grid,
            avg[i],
            _STYLES[(i // 10) % 4],
            color=f"C{i % 10}",
            lw=2,
            label=s,
            drawstyle="steps-post",
        )
    if is_log:
        ax.set_xscale("log")
    ax.set_ylim(len(strategies) + 0.2, 0.8)  # rank 1 (best) at the top
    ax.set_yticks(range(1, len(strategies) + 1))
    ax.set_xlabel("budget: member-steps (summed over the run's members)")
    ax.set_ylabel("average rank (1 = best)")
    ax.set_title(
        f"Average rank of anytime best {metric} over budget\n{len(complete)} task x seed pairs; a run not started yet ranks last, a finished one keeps its best"
    )
    ax.grid(True, which="both", alpha=0.3)
    who = "sweep/strategy" if any("/" in s for s in strategies) else "strategy"
    ax.legend(title=who, fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1))
    return _save(fig, path)


def make_plots(
    table: pa.Table,
    out_dir: str | Path,
    metric: str = "val_loss",
    *,
    curves: dict[RunKey, Curve] | None = None,
) -> list[Path]:
    """Write the PNGs of ``metric`` (a validation metric; accuracies are drawn on a linear
    axis, losses on a log axis) into ``out_dir`` (atomically each) and return their paths;
    ``curves``: ``run_curves(table, metric)`` when the caller has them already."""
    if curves is None:
        curves = run_curves(table, metric)
    if not curves:
        raise DataError(f"no {metric!r} rows to plot")
    out = Path(out_dir)
    groups = _by_strategy(curves)
    paths = [
        _curve_plot(groups, "budget", metric, out / f"best_{metric}_vs_member_steps.png"),
        _curve_plot(groups, "wall", metric, out / f"best_{metric}_vs_wall_time.png"),
    ]
    rank = _rank_plot(curves, metric, out / f"rank_vs_budget_{metric}.png")
    if rank is not None:
        paths.append(rank)
    return paths
