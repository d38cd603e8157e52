"""Helpers shared by subcommand modules."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def add_command(
    sub: Any, name: str, help: str, func: Callable[[argparse.Namespace], int | None], description: str | None = None
) -> argparse.ArgumentParser:
    """Create a subcommand parser wired to ``func``; ``--config`` is available on every one."""
    p: argparse.ArgumentParser = sub.add_parser(
        name, help=help, description=description or help, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.set_defaults(func=func, _parser=p)
    p.add_argument("--config", metavar="FILE.yaml", help="YAML mapping of option: value (flags win over it)")
    return p
