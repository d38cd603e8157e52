"""Flags every ``raymeta bench`` command shares, declared once."""

from __future__ import annotations

import argparse

from raymeta.options import add_renamed
from raymeta.paths import output_arg


def add_json_out(p: argparse.ArgumentParser, help: str) -> None:
    """``--out PATH`` for a benchmark's JSON records (``--json`` is its deprecated spelling)."""
    p.add_argument("--out", type=output_arg("--out"), metavar="PATH", help=help)
    add_renamed(p, "--json", "--out", type=output_arg("--json"))
