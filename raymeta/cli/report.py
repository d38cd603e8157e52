"""``raymeta report RESULTS_DIR``: per-strategy table of a results dataset, plus PNG plots."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from raymeta.cli._common import add_command
from raymeta.results.reporting import FORMATS


def add_parser(sub: Any) -> None:
    p = add_command(
        sub,
        "report",
        "summarise a results dataset: per-strategy mean, median and 95-percent CI over tasks, regret, rank, time to target, pairwise per-task win rates and notes; PNG plots",
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


def run(args: argparse.Namespace) -> int:
    from raymeta.results.reporting import report

    rep = report(
        args.results_dir,
        sweep=args.sweep,
        metric=args.metric,
        target=args.target,
        format=args.format,
        plots=args.plots,
    )
    print(rep.text)
    if rep.plots:
        print("\n".join(f"wrote {p}" for p in rep.plots), file=sys.stderr)
    return 0
