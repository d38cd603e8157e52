"""``report``: results summarised per sweep and strategy, as a table and optional PNG plots.

The one implementation behind ``raymeta report`` and ``raymeta.report``: the arguments are
checked before anything is read (a bad one is one ``ConfigError`` line, nothing written), the
datasets under the given paths are found and read as one table (``discover.py``), grouped by
sweep unless pooled (``group_rows``), then summarised (``summary.py``), rendered
(``render.py``) and plotted (``plots.py``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raymeta import checks
from raymeta.errors import ConfigError
from raymeta.paths import check_output_dir

if TYPE_CHECKING:
    import pyarrow as pa

FORMATS = ("table", "markdown", "json")
PathArg = str | os.PathLike[str]


@dataclass
class Report:
    """Per-group summary rows (best average rank first; a group is a strategy, as
    ``sweep/strategy`` when several sweeps are grouped, and each row's ``sweep`` says its
    sweep, None for a pool of several), their text, the plots written, the pairwise per-task
    win rates ({(a, b): {...}}, see ``summary.win_rates``), the notes and the datasets read."""

    rows: list[dict[str, Any]]
    text: str
    plots: list[Path] = field(default_factory=list)
    wins: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    datasets: list[Path] = field(default_factory=list)

    def __str__(self) -> str:
        return self.text


def check_report_args(
    metric: Any, target: Any, fmt: Any, plots: str | os.PathLike[str] | None
) -> None:
    """Refuse bad arguments before the dataset is read (nothing is written)."""
    if target is not None and (
        isinstance(target, bool) or not isinstance(target, int | float) or not math.isfinite(target)
    ):
        raise ConfigError(f"--target must be a finite number, got {target!r}")
    if not isinstance(metric, str) or not metric.strip():
        raise ConfigError(f"--metric must name a metric such as test_loss, got {metric!r}")
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if plots is not None:
        if not isinstance(plots, str | os.PathLike) or not str(plots):
            raise ConfigError(f"--plots must name a directory, got {plots!r}")
        check_output_dir(plots, "--plots")


def group_rows(table: pa.Table, pool: bool = False) -> pa.Table:
    """Rows whose ``strategy`` is the report's group: ``sweep/strategy`` when the rows hold
    several sweeps and ``pool`` is false (a strategy run in two sweeps, say with different
    budgets, is two groups), else the strategy itself (sweeps pooled)."""
    import pyarrow.compute as pc

    if pool or len(table["sweep"].unique()) <= 1:
        return table
    label = pc.binary_join_element_wise(table["sweep"], table["strategy"], "/")
    return table.set_column(table.schema.get_field_index("strategy"), "strategy", label)


def _sweeps_of(table: pa.Table) -> dict[str, list[str]]:
    """{group: [its sweeps]} of a grouped table."""
    pairs = table.select(["strategy", "sweep"]).group_by(["strategy", "sweep"]).aggregate([])
    out: dict[str, list[str]] = {}
    for g, sw in zip(pairs["strategy"].to_pylist(), pairs["sweep"].to_pylist(), strict=True):
        out.setdefault(g, []).append(sw)
    return {g: sorted(v) for g, v in out.items()}


def _scope(roots: list[Path], sweeps: list[str], pool: bool) -> str:
    shown = ", ".join(str(r) for r in roots[:3]) + (
        f" and {len(roots) - 3} more" if len(roots) > 3 else ""
    )
    how = "pooled" if pool and len(sweeps) > 1 else "grouped by sweep"
    return f"read {len(roots)} dataset(s): {shown}; sweeps {', '.join(sweeps) or 'none'} ({how})"


def report(
    paths: PathArg | Sequence[PathArg],
    *,
    sweep: str | None = None,
    pool: bool = False,
    metric: str = "test_loss",
    target: float | None = None,
    format: str = "table",
    plots: PathArg | None = None,
) -> Report:
    """Summarise the results under ``paths`` per sweep and strategy.

    ``paths``: one or several results datasets, ``sweep=NAME`` folders, ``raymeta tune`` run
    directories, directories holding any of them, or glob patterns (see ``discover.py``); all
    their rows form one table. Groups are ``sweep/strategy`` when several sweeps are read
    (``pool=True``: strategies pooled over sweeps; ``sweep``: only that one). Per group: mean,
    median and a seeded 95% percentile-bootstrap CI of ``metric`` over tasks (seeds averaged
    per task), normalised regret, average rank and member-steps / wall time to ``target``
    (default: per task, the worst group's mean final best validation value), then pairwise
    per-task win rates and notes; ``plots`` also writes PNG plots of the validation
    counterpart of ``metric`` (``val_accuracy`` for ``test_accuracy``) into that directory."""
    from raymeta.results.curves import run_curves, validation_metric
    from raymeta.results.discover import find_datasets, read_datasets
    from raymeta.results.plots import make_plots
    from raymeta.results.render import render
    from raymeta.results.summary import notes, summarise, win_rates

    check_report_args(metric, target, format, plots)
    checks.boolean("pool", pool)  # pool="no" pooled the sweeps (a truthy string)
    datasets = find_datasets(paths)
    rows_table = read_datasets(datasets, sweep=sweep)
    table = group_rows(rows_table, pool)
    curves = run_curves(table, validation_metric(metric))  # for the table and the plots
    rows = summarise(table, metric=metric, target=target, curves=curves)
    groups = _sweeps_of(table)
    for d in rows:
        sw = groups.get(d["strategy"], [])
        d["sweep"] = sw[0] if len(sw) == 1 else None
    wins = win_rates(table, metric=metric)
    said = notes(rows, wins)
    sweeps = sorted(rows_table["sweep"].unique().to_pylist())
    roots = [ds.root for ds in datasets]
    scope = _scope(roots, sweeps, pool)
    text = render(rows, format, metric=metric, target=target, wins=wins, notes=said, scope=scope)
    paths_out: list[Path] = []
    if plots is not None:
        try:
            paths_out = [
                Path(p)
                for p in make_plots(
                    table, Path(plots), metric=validation_metric(metric), curves=curves
                )
            ]
        except OSError as exc:
            raise ConfigError(f"--plots {plots}: {exc.strerror or exc}") from None
    return Report(rows, text, paths_out, wins, said, roots)
