"""Helpers shared by subcommand modules."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import yaml

from raymeta.errors import ConfigError


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


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line, ``raymeta: error: ...``, exit 2.

    argparse's own ``error()`` prints the usage block and ``PROG: error: ...``; the CLI promises
    exactly one ``raymeta: error:`` line for every bad input, so scripts and the bad-input tests
    can rely on one format. Abbreviated long options are refused (``allow_abbrev=False``): a
    config value could otherwise be silently overridden by a prefix like ``--task`` for
    ``--tasks``. Subparsers inherit the class (argparse builds them with ``type(parent)``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        where = self.prog.removeprefix("raymeta").strip()
        text = " ".join(str(message).split())
        sys.stderr.write(f"raymeta: error: {where + ': ' if where else ''}{text}\n")
        sys.exit(2)


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


def parse_options(items: Any, what: str) -> dict[str, Any]:
    """``["k=v", ...]`` (values parsed as YAML scalars/lists) or a mapping from a config file."""
    if items is None:
        return {}
    if isinstance(items, dict):
        return {str(k): v for k, v in items.items()}
    if isinstance(items, str):
        items = [items]
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = str(item).partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--{what}-option expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out
