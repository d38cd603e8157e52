"""``report``: a results dataset summarised per strategy, as a table and optional PNG plots.

The one implementation behind ``raymeta report`` and ``raymeta.report``: the arguments are
checked before the dataset is read (a bad one is one ``ConfigError`` line, nothing written),
then the rows are summarised (``summary.py``), rendered (``render.py``) and plotted
(``plots.py``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raymeta.errors import ConfigError
from raymeta.paths import check_output_dir

FORMATS = ("table", "markdown", "json")


@dataclass
class Report:
    """Per-strategy summary rows (best average rank first), their text, the plots written, the
    pairwise per-task win rates ({(a, b): {...}}, see ``summary.win_rates``) and the notes."""

    rows: list[dict[str, Any]]
    text: str
    plots: list[Path] = field(default_factory=list)
    wins: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

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


def report(
    results_dir: str | os.PathLike[str],
    *,
    sweep: str | None = None,
    metric: str = "test_loss",
    target: float | None = None,
    format: str = "table",
    plots: str | os.PathLike[str] | None = None,
) -> Report:
    """Summarise ``results_dir`` (a dataset of ``raymeta sweep`` or ``raymeta tune`` rows) per
    strategy: mean, median and 95% CI of ``metric`` over tasks (seeds averaged per task),
    normalised regret, average rank and member-steps / wall time to ``target`` (default: per
    task, the worst strategy's mean final best validation value), then pairwise per-task win
    rates and notes (identical seeds, mean differences a few tasks drive); ``plots`` also
    writes PNG plots into that directory."""
    from raymeta.results.curves import validation_metric
    from raymeta.results.plots import make_plots
    from raymeta.results.reader import read_results
    from raymeta.results.render import render
    from raymeta.results.summary import notes, summarise, win_rates

    check_report_args(metric, target, format, plots)
    table = read_results(Path(results_dir), sweep=sweep)
    rows = summarise(table, metric=metric, target=target)
    wins = win_rates(table, metric=metric)
    said = notes(rows, wins)
    text = render(rows, format, metric=metric, target=target, wins=wins, notes=said)
    paths: list[Path] = []
    if plots is not None:
        try:
            paths = [
                Path(p) for p in make_plots(table, Path(plots), metric=validation_metric(metric))
            ]
        except OSError as exc:
            raise ConfigError(f"--plots {plots}: {exc.strerror or exc}") from None
    return Report(rows, text, paths, wins, said)
