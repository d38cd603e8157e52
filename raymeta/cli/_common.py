"""Helpers shared by subcommand modules."""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from raymeta import checks
from raymeta.options import float_arg, int_arg

__all__ = ["float_arg", "int_arg"]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help as plain text: every meaningful default shown (0 included; not None, False or
    suppressed), and reStructuredText markup (double backquotes, from docstrings used as
    descriptions) taken out so ``--help`` never shows it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        hidden = default is None or default is False or default is argparse.SUPPRESS
        if hidden or "%(default)" in text or "default" in text:
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return text + " (default: %(default)s)"
        return text

    def _expand_help(self, action: argparse.Action) -> str:
        return plain(super()._expand_help(action))

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return super()._fill_text(plain(text), width, indent)


def plain(text: str) -> str:
    """``text`` without reStructuredText inline markup: ``x`` and `x` become x."""
    return text.replace("`", "")


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line, ``raymeta: error: ...``, exit 2.

    argparse's own ``error()`` prints the usage block and ``PROG: error: ...``; the CLI promises
    exactly one ``raymeta: error:`` line for every bad input, so scripts and the bad-input tests
    can rely on one format. Abbreviated long options are refused (``allow_abbrev=False``): a
    config value could otherwise be silently overridden by a prefix like ``--task`` for
    ``--tasks``. Subparsers inherit the class (argparse builds them with ``type(parent)``), so every
    subcommand and sub-subcommand refuses abbreviations and uses ``HelpFormatter``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def format_help(self) -> str:
        """As argparse's; an ``epilog`` may be a function, called only when help is shown (so a
        text that needs a heavy import costs nothing on every other command line)."""
        if callable(self.epilog):
            self.epilog = self.epilog()
        return super().format_help()

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


_ADDRESS = re.compile(r"^(ray://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})$")


def address_arg(text: Any) -> str:
    """``type=`` for ``--address``: ``auto``, ``HOST:PORT`` or ``ray://HOST:PORT`` (the last
    only where the Ray Client extra is installed); checked before any Ray process starts."""
    if not isinstance(text, str):
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {checks.show_value(text)}")
    text = text.strip()
    if text == "auto":
        return text
    m = _ADDRESS.match(text)
    if m is None or not 1 <= int(m.group(3)) <= 65535:
        raise argparse.ArgumentTypeError(
            f"expected HOST:PORT, ray://HOST:PORT or auto, got {text!r}"
        )
    if m.group(1) and importlib.util.find_spec("grpc") is None:
        raise argparse.ArgumentTypeError(
            f"{text}: ray:// addresses need the Ray Client (pip install 'ray[client]'); "
            "or pass the head's HOST:PORT (e.g. 10.0.0.1:6379)"
        )
    return text


def path_arg(text: Any) -> str:
    """``type=`` for a file or directory flag: a non-empty path without NUL bytes."""
    if not isinstance(text, str) or not text.strip() or "\x00" in text:
        raise argparse.ArgumentTypeError(f"expected a path, got {text!r}")
    return text


def column_names(text: Any) -> list[str]:
    """``type=`` for ``--feature-columns A,B,C`` (a YAML list from --config is accepted too)."""
    items = text if isinstance(text, list) else str(text).split(",")
    names = [str(n).strip() for n in items]
    if not names or any(not n for n in names):
        raise argparse.ArgumentTypeError(f"expected column names A,B,C, got {text!r}")
    return names
