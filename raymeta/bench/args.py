"""Flags every ``raymeta bench`` command shares, declared once."""

from __future__ import annotations

import argparse

from raymeta.options import add_renamed
from raymeta.paths import check_output_file, check_outside_artifacts, output_arg

MAX_THREADS = 1024  # torch intra-op threads: more than any machine's cores, far below C int


def add_json_out(p: argparse.ArgumentParser, help: str) -> None:
    """``--out PATH`` for a benchmark's JSON records (``--json`` is its deprecated spelling).

    The action is marked (``json_out``, as ``add_renamed`` marks aliases) so ``raymeta bench``
    checks the path before the benchmark runs: the records are written last, and a directory
    or unwritable ``--out`` must not cost a whole benchmark run before it is refused."""
    act = p.add_argument("--out", type=output_arg("--out"), metavar="PATH", help=help)
    act.json_out = True  # type: ignore[attr-defined]
    add_renamed(p, "--json", "--out", type=output_arg("--json"))


def check_json_out(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse (one-line ``ConfigError``) a JSON ``--out`` that could not be written at the end:
    a directory, a place where no file can be created, or a path inside a meta-checkpoint, a
    tune run or a results dataset (whose files it would replace or sit among, as for every
    other command's ``--out``). An existing file is replaced, as before."""
    for act in p._actions:  # noqa: SLF001 - argparse exposes no public accessor
        value = getattr(args, act.dest, None)
        if getattr(act, "json_out", False) and value:
            check_output_file(value, "--out", force=True)
            check_outside_artifacts(value, "--out")
