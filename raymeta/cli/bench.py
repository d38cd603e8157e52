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

from raymeta.bench.args import check_json_out
from raymeta.cli._common import (
    HelpFormatter,
    Parser,
    add_config_option,
    check_required,
    defer_required,
)
from raymeta.cli._config import apply_config
from raymeta.errors import ConfigError
from raymeta.options import apply_renamed

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
    "population": (
        "raymeta.bench.population",
        "population trainer vs a bare vmap(grad) SGD population",
    ),
    "fewshot": (
        "raymeta.bench.fewshot",
        "Omniglot / sinusoid / digits beside published numbers, with baselines",
    ),
}


def add_parser(sub: Any) -> None:
    lines = "\n".join(f"  {k:<11} {h}" for k, (_, h) in BENCHES.items())
    p = sub.add_parser(
        "bench",
        help="run a performance or quality benchmark",
        description=__doc__,
        epilog=f"benchmarks:\n{lines}\n\nRun 'raymeta bench WHAT --help' for its options.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("what", nargs="?", choices=list(BENCHES), metavar="WHAT", help="which benchmark")
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(func=_run)


def bench_parser(what: str) -> Parser:
    """The parser of ``raymeta bench WHAT`` (imports that benchmark's module, not torch)."""
    mod = importlib.import_module(BENCHES[what][0])
    bp = Parser(prog=f"raymeta bench {what}", description=mod.HELP)
    add_config_option(bp)
    mod.add_arguments(bp)
    defer_required(bp)  # a benchmark's required=True options may come from --config too
    bp.set_defaults(func=mod.run)
    return bp


def _run(args: argparse.Namespace) -> int:
    if args.what is None:  # argparse would name the hidden REMAINDER ("WHAT, rest")
        raise ConfigError(
            f"bench: which benchmark? one of {', '.join(BENCHES)} (raymeta bench --help)"
        )
    bp = bench_parser(args.what)
    rest = list(args.rest)
    bargs = apply_config(bp, bp.parse_args(rest), rest)
    apply_renamed(bp, bargs)
    check_required(bp, bargs)
    check_json_out(bp, bargs)
    return int(bargs.func(bargs) or 0)
