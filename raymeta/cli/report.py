"""``raymeta report PATH [PATH ...]``: per-sweep, per-strategy table of the results under the
paths (datasets, tune run directories, folders of either, globs), plus PNG plots."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from typing import Any

from raymeta.cli._common import add_command, float_arg
from raymeta.errors import ConfigError
from raymeta.paths import output_arg
from raymeta.results.reporting import FORMATS


def add_parser(sub: Any) -> None:
    p = add_command(
        sub,
        "report",
        "summarise results: per sweep and strategy, mean, median and 95-percent bootstrap CI over tasks, regret, rank, time to target, pairwise per-task win rates and notes; PNG plots",
        run,
    )
    p.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="results written by 'raymeta tune' or 'raymeta sweep': a tune run directory, a results dataset (holds _schema.json), a directory holding such things at any depth, or a glob (quoted or not); all are read as one table",
    )
    p.add_argument("--sweep", metavar="NAME", help="only this sweep (default: every sweep found)")
    p.add_argument(
        "--pool",
        action="store_true",
        help="pool each strategy over sweeps (default: a strategy in two sweeps is two groups, shown as sweep/strategy)",
    )
    p.add_argument("--format", choices=FORMATS, default="table", help="output format")
    p.add_argument(
        "--plots",
        type=output_arg("--plots"),
        metavar="DIR",
        help="also write PNG plots of the metric's validation curves (val_accuracy for test_accuracy) into DIR",
    )
    p.add_argument(
        "--metric",
        default="test_loss",
        help="final metric to compare (e.g. test_loss, test_accuracy)",
    )
    p.add_argument(
        "--target",
        type=float_arg(),  # finite, of any sign (the Parser reads -1e-3 as a value)
        help="validation value counted as 'reached' (default: per task, the worst strategy's mean final best)",
    )


def run(args: argparse.Namespace) -> int:
    from raymeta.results.reporting import report

    if args.plots and importlib.util.find_spec("matplotlib") is None:  # before reading results
        raise ConfigError("--plots needs matplotlib: pip install 'raymeta[plots]'")
    rep = report(
        args.paths,
        sweep=args.sweep,
        pool=args.pool,
        metric=args.metric,
        target=args.target,
        format=args.format,
        plots=args.plots,
    )
    print(rep.text)
    if rep.plots:
        print("\n".join(f"wrote {p}" for p in rep.plots), file=sys.stderr)
    return 0
