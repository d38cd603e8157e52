"""Helpers shared by subcommand modules."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows a flag's default only when it has a meaningful one (not None/False/suppressed)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "%(default)" in text or default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return text + " (default: %(default)s)"
        return text


def add_command(
    sub: Any,
    name: str,
    help: str,
    func: Callable[[argparse.Namespace], int | None],
    description: str | None = None,
) -> argparse.ArgumentParser:
    """Create a subcommand parser wired to ``func``; ``--config`` is available on every one."""
    p: argparse.ArgumentParser = sub.add_parser(
        name, help=help, description=description or help, formatter_class=HelpFormatter
    )
    p.set_defaults(func=func, _parser=p)
    p.add_argument(
        "--config", metavar="FILE.yaml", help="YAML mapping of option: value (flags win over it)"
    )
    return p
