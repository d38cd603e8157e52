"""``raymeta bench WHAT [options]``: performance and quality benchmarks, printed as ratios
against a reference measured in the same run.

Each benchmark is a module ``raymeta.bench.<name>`` exposing ``HELP: str``,
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported only when their
benchmark runs, so ``raymeta --help`` never pays for torch.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from raymeta.cli._common import HelpFormatter, Parser
from raymeta.cli._config import apply_config

BENCHES = {
    "engine": (
        "raymeta.bench.engine",
        "vmapped engine vs looped reference vs bare torch.func (and higher/torchopt)",
    ),
    "learning": ("raymeta.bench.learning", "MAML sinusoid learning quality vs a random init"),
    "meta-train": (
        "raymeta.bench.meta_train",
        "tasks/s in-process vs Ray Train with 1 and 2 workers",
    ),
    "priors": (
        "raymeta.bench.priors",
        "learned prior vs broad space: regret, portfolio wins, fit time",
    ),
    "tune": ("raymeta.bench.tune", "packed members speed-up; time to quality of warm-started PBT"),
    "sweep": ("raymeta.bench.sweep", "a large sweep: wall time, peak memory, strategy table"),
}


def add_parser(sub: Any) -> None:
    lines = "\n".join(f"  {k:<11} {h}" for k, (_, h) in BENCHES.items())
    p = sub.add_parser(
        "bench",
        help="run a performance or quality benchmark",
        description=__doc__,
        epilog=f"benchmarks:\n{lines}\n\nRun 'raymeta bench WHAT --help' for its options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("what", choices=list(BENCHES), metavar="WHAT", help="which benchmark")
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    modname, help_text = BENCHES[args.what]
    mod = importlib.import_module(modname)
    bp = Parser(
        prog=f"raymeta bench {args.what}", description=mod.HELP, formatter_class=HelpFormatter
    )
    bp.add_argument(
        "--config", metavar="FILE.yaml", help="YAML mapping of option: value (flags win over it)"
    )
    mod.add_arguments(bp)
    rest = list(args.rest)
    bargs = apply_config(bp, bp.parse_args(rest), rest)
    return int(mod.run(bargs) or 0)
