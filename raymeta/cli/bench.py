"""``raymeta bench WHAT``: performance benchmarks, printed as ratios against a reference
measured in the same run.

Each benchmark is a module ``raymeta.bench.<name>`` exposing ``HELP: str``,
``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from raymeta.cli._common import add_command

BENCHES = {
    "engine": "raymeta.bench.engine",
    "learning": "raymeta.bench.learning",
    "meta-train": "raymeta.bench.meta_train",
    "priors": "raymeta.bench.priors",
    "tune": "raymeta.bench.tune",
    "sweep": "raymeta.bench.sweep",
}


def add_parser(sub: Any) -> None:
    p = sub.add_parser("bench", help="run a performance or quality benchmark", description=__doc__)
    inner = p.add_subparsers(dest="bench", metavar="WHAT")
    for name, modname in BENCHES.items():
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as exc:
            if exc.name == modname:
                continue
            raise
        bp = add_command(inner, name, mod.HELP, mod.run)
        mod.add_arguments(bp)
    p.set_defaults(func=lambda args: _no_bench(p))


def _no_bench(p: argparse.ArgumentParser) -> int:
    p.print_help()
    return 2
