"""``raymeta sweep SWEEP.yaml --out DIR``: benchmark sweeps into a Parquet results dataset."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from raymeta.cli._common import add_command
from raymeta.errors import ConfigError
from raymeta.paths import check_output_dir, output_arg

EPILOG = """SWEEP.yaml keys: name, meta (list of meta-checkpoint dirs), strategies
(INIT+PRIOR+SCHEDULER as in raymeta tune, e.g. scratch+broad+random, scratch+broad+pbt,
meta+fixed-default, meta+learned+pbt; schedulers pbt or random), tasks (a count or a list of
held-out task indices), seeds, population (members per unit), steps_per_member, interval,
fixed_steps (steps of the fixed-default strategy), task_options (split sizes of the held-out
tasks, e.g. {val_size: 50}); budget is the deprecated name of steps_per_member.
Rerunning the same command after a kill finishes the sweep without duplicate rows."""


def add_parser(sub: Any) -> None:
    p = add_command(
        sub, "sweep", "run a benchmark sweep (strategies x held-out tasks x seeds) on Ray", _run
    )
    p.epilog = EPILOG
    p.add_argument("sweep_file", metavar="SWEEP.yaml", help="the sweep definition")
    p.add_argument(
        "--out",
        required=True,
        type=output_arg("--out"),
        help="results directory (a Parquet dataset partitioned by sweep)",
    )
    p.add_argument(
        "--address", default=None, help="join this Ray cluster (default: embedded local Ray)"
    )
    p.add_argument(
        "--max-concurrency",
        type=int,
        default=None,
        help="units at once (default: the cluster's CPUs)",
    )
    p.add_argument(
        "--quiet", action="store_true", help="no progress output (the progress line goes to stderr)"
    )


def _run(args: argparse.Namespace) -> int:
    from raymeta.orchestration.sweep.config import load_sweep
    from raymeta.orchestration.sweep.run import run_sweep

    if args.max_concurrency is not None and args.max_concurrency < 1:
        raise ConfigError(f"--max-concurrency must be >= 1, got {args.max_concurrency}")
    cfg = load_sweep(args.sweep_file)
    check_output_dir(args.out, "--out")
    _check_not_in_a_run(Path(args.out))
    out = run_sweep(
        cfg,
        Path(args.out),
        address=args.address,
        max_concurrency=args.max_concurrency,
        progress=not args.quiet,
    )
    print(
        f"sweep {cfg.name}: {out['units']} units ({out['ran']} run now) in {out['wall_s']:.1f}s -> {args.out}"
    )
    print(f"summarise with: raymeta report {args.out} --sweep {cfg.name}")
    return 0


def _check_not_in_a_run(out: Path) -> None:
    """A results dataset of its own: never inside a meta-checkpoint (its parts would sit among
    the checkpoint's files; ``meta-train --out`` refuses the same) nor a ``raymeta tune`` run
    directory (whose own results live in RUN/results)."""
    from raymeta.core.checkpoint import read_meta
    from raymeta.errors import CheckpointError

    try:
        here = out.expanduser().absolute()
    except (OSError, ValueError):
        return
    for d in (here, *here.parents):
        try:
            ckpt = (d / "meta.json").is_file()
            run = (d / "run.json").is_file() and (
                (d / "report.json").is_file() or (d / ".trust").is_dir()
            )
        except OSError:
            return
        if ckpt:
            try:
                read_meta(d)
            except CheckpointError:  # someone else's meta.json: not a checkpoint
                ckpt = False
        if ckpt or run:
            what = "meta-checkpoint" if ckpt else "tune run"
            raise ConfigError(f"--out {out} lies inside the {what} {d}; pick a path outside it")
