"""``raymeta sweep SWEEP.yaml --out DIR``: benchmark sweeps into a Parquet results dataset."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from raymeta.cli._common import add_command, address_arg, defer_required, int_arg
from raymeta.errors import ConfigError
from raymeta.paths import check_output_dir, output_arg

EPILOG = """SWEEP.yaml keys: name, meta (list of meta-checkpoint dirs), strategies
(INIT+PRIOR+SCHEDULER as in raymeta tune, e.g. scratch+broad+random, scratch+broad+pbt,
meta+fixed-default, meta+learned+pbt; schedulers pbt or random), tasks (a count or a list of
held-out task indices), seeds, population (members per unit), steps_per_member, interval,
fixed_steps (steps of the fixed-default strategy), task_options (split sizes of the held-out
tasks, e.g. {val_size: 50}); budget is the deprecated name of steps_per_member.
Rerunning the same command after a kill finishes the sweep without duplicate rows.

--local runs the sweep on this machine without Ray: the same batches, rows and resume, in
--max-concurrency worker processes (default: one per CPU this process may use). It is for one
machine, where Ray's start-up and its workers' first imports (seconds on a small machine) can
cost more than the sweep's fine-tuning; a sweep across a cluster needs Ray (--address).
Every flag can also be given in --config FILE.yaml (e.g. local: true)."""


def add_parser(sub: Any) -> None:
    p = add_command(
        sub,
        "sweep",
        "run a benchmark sweep (strategies x held-out tasks x seeds) on Ray, or --local",
        _run,
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
        "--address",
        type=address_arg,
        default=None,
        help="join this Ray cluster (HOST:PORT or auto; default: embedded local Ray)",
    )
    p.add_argument(
        "--local",
        action="store_true",
        help="run on this machine without Ray (no Ray start-up; a cluster sweep needs Ray)",
    )
    p.add_argument(
        "--max-concurrency",
        type=int_arg(1),
        default=None,
        help="batches at once: Ray tasks, or with --local worker processes (default: the "
        "cluster's CPUs; with --local this machine's)",
    )
    p.add_argument(
        "--quiet", action="store_true", help="no progress output (the progress line goes to stderr)"
    )
    defer_required(p)  # --out may come from --config


def _run(args: argparse.Namespace) -> int:
    from raymeta.orchestration.sweep.config import load_sweep
    from raymeta.orchestration.sweep.run import check_results_dir, run_sweep

    if args.local and args.address is not None:
        raise ConfigError(
            f"--local runs the sweep on this machine without Ray and cannot join --address "
            f"{args.address}: give one of them"
        )
    cfg = load_sweep(args.sweep_file)
    check_output_dir(args.out, "--out")
    check_results_dir(Path(args.out), "--out")
    out = run_sweep(
        cfg,
        Path(args.out),
        address=args.address,
        max_concurrency=args.max_concurrency,
        progress=not args.quiet,
        local=args.local,
    )
    print(
        f"sweep {cfg.name}: {out['units']} units ({out['ran']} run now) in {out['wall_s']:.1f}s -> {args.out}"
    )
    print(f"summarise with: raymeta report {args.out} --sweep {cfg.name}")
    return 0
