"""``raymeta report RESULTS_DIR``: per-strategy table of a results dataset, plus PNG plots."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from raymeta.cli._common import add_command
from raymeta.errors import ConfigError
from raymeta.paths import check_output_dir

FORMATS = ("table", "markdown", "json")


def add_parser(sub: Any) -> None:
    p = add_command(
        sub,
        "report",
        "summarise a results dataset: per-strategy mean and 95-percent CI, regret, rank, time to target; PNG plots",
        run,
    )
    p.add_argument(
        "results_dir",
        metavar="RESULTS_DIR",
        help="results dataset written by 'raymeta sweep' (holds _schema.json)",
    )
    p.add_argument(
        "--sweep", metavar="NAME", help="only this sweep (default: every sweep in the dataset)"
    )
    p.add_argument("--format", choices=FORMATS, default="table", help="output format")
    p.add_argument("--plots", metavar="DIR", help="also write PNG plots into DIR")
    p.add_argument(
        "--metric",
        default="test_loss",
        help="final metric to compare (e.g. test_loss, test_accuracy)",
    )
    p.add_argument(
        "--target",
        type=float,
        help="validation value counted as 'reached' (default: per task, the worst strategy's mean final best)",
    )


def _check(args: argparse.Namespace) -> None:
    """Flags checked before the dataset is read: a bad one is one line and nothing is written."""
    target = args.target
    if target is not None and (
        isinstance(target, bool)
        or not isinstance(target, (int, float))
        or not math.isfinite(target)
    ):
        raise ConfigError(f"--target must be a finite number, got {target!r}")
    if not isinstance(args.metric, str) or not args.metric.strip():
        raise ConfigError(f"--metric must name a metric such as test_loss, got {args.metric!r}")
    if args.format not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {args.format!r}")
    if args.plots is not None:
        if not isinstance(args.plots, str) or not args.plots:
            raise ConfigError(f"--plots must name a directory, got {args.plots!r}")
        check_output_dir(args.plots, "--plots")


def run(args: argparse.Namespace) -> int:
    from raymeta.results import make_plots, read_results, summarise
    from raymeta.results.curves import validation_metric
    from raymeta.results.render import render

    _check(args)
    table = read_results(args.results_dir, sweep=args.sweep)
    summary = summarise(table, metric=args.metric, target=args.target)
    text = render(summary, args.format, metric=args.metric, target=args.target)
    paths = []
    if args.plots:
        try:
            paths = make_plots(table, args.plots, metric=validation_metric(args.metric))
        except OSError as exc:
            raise ConfigError(f"--plots {args.plots}: {exc.strerror or exc}") from None
    print(text)
    if paths:
        print("\n".join(f"wrote {p}" for p in paths), file=sys.stderr)
    return 0
