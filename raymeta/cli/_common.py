"""Helpers shared by subcommand modules."""

from __future__ import annotations

import argparse
import contextlib
import functools
import re
import sys
from collections.abc import Callable, Iterator
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


# what argparse reads as a negative number (a value), not an option: exponents, inf and nan too
NEGATIVE_NUMBER = re.compile(
    r"^-(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$|^-(?:inf|infinity|nan)$", re.IGNORECASE
)


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
        # argparse takes only -5 and -.5 for negative numbers: "--target -1e-3" was refused as
        # "expected one argument" (-1e-3 looked like an option) and "--target -inf" too,
        # instead of reaching the option's own check (no option of raymeta looks like a number)
        self._negative_number_matcher = NEGATIVE_NUMBER

    def format_help(self) -> str:
        """As argparse's; an ``epilog`` may be a function, called only when help is shown (so a
        text that needs a heavy import costs nothing on every other command line)."""
        if callable(self.epilog):
            self.epilog = self.epilog()
        with _shown_required(self):
            return super().format_help()

    def format_usage(self) -> str:
        with _shown_required(self):
            return super().format_usage()

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
    p.set_defaults(func=_checked(func, p), _parser=p)
    add_config_option(p)
    return p


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """``--config FILE.yaml``: a path (``path_arg``), so ``--config ""`` (an unset shell
    variable) is one line instead of a run on the defaults without a word."""
    parser.add_argument(
        "--config",
        type=path_arg,
        metavar="FILE.yaml",
        help="YAML mapping of option: value (flags win over it)",
    )


# set on an option that ``defer_required`` took over from argparse's ``required=True``
AFTER_CONFIG = "required_after_config"


def defer_required(parser: argparse.ArgumentParser) -> None:
    """Every ``required=True`` option of ``parser`` may come from ``--config FILE.yaml`` too.

    argparse checks required options while it parses, before the file is read, so a value given
    only in the file was refused. Such options become optional to argparse, stay marked as
    required in ``--help`` (unbracketed in the usage line, "(required)" in their help) and are
    checked by ``check_required`` once the file is applied, before the command does any work.
    Call it after the parser's options are added."""
    for act in parser._actions:  # noqa: SLF001 - argparse exposes no public accessor
        if act.required and act.option_strings:
            act.required = False
            setattr(act, AFTER_CONFIG, True)
            if act.help is not argparse.SUPPRESS and "required" not in (act.help or ""):
                act.help = f"{act.help} (required)" if act.help else "required"


def _deferred(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if getattr(a, AFTER_CONFIG, False)]  # noqa: SLF001


@contextlib.contextmanager
def _shown_required(parser: argparse.ArgumentParser) -> Iterator[None]:
    """While help is formatted, the deferred options are required again (no brackets)."""
    acts = _deferred(parser)
    for act in acts:
        act.required = True
    try:
        yield
    finally:
        for act in acts:
            act.required = False


def _flag(act: argparse.Action) -> str:
    return next((o for o in act.option_strings if o.startswith("--")), act.option_strings[0])


def check_required(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """One ``ConfigError`` naming every deferred required option that neither a flag nor the
    config file gave (run after ``apply_config`` and ``apply_renamed``)."""
    from raymeta.errors import ConfigError

    missing = [_flag(a) for a in _deferred(parser) if getattr(args, a.dest, None) is None]
    if not missing:
        return
    where = parser.prog.removeprefix("raymeta").strip()
    names = missing[0] if len(missing) == 1 else ", ".join(missing[:-1]) + " and " + missing[-1]
    verb, them = ("is", "it") if len(missing) == 1 else ("are", "them")
    raise ConfigError(
        f"{where + ': ' if where else ''}{names} {verb} required "
        f"(give {them} on the command line or in --config FILE.yaml)"
    )


def _checked(
    func: Callable[[argparse.Namespace], int | None], parser: argparse.ArgumentParser
) -> Callable[[argparse.Namespace], int | None]:
    """``func`` after ``check_required``: the CLI calls a command's ``func`` once the config
    file and deprecated aliases are applied, so this is the first point where a required
    option's value is known wherever it came from."""

    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int | None:
        check_required(parser, args)
        return func(args)

    return run


_ADDRESS = re.compile(r"^(ray://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})$")


def address_arg(text: Any) -> str:
    """``type=`` for ``--address``: ``auto`` or ``HOST:PORT``; checked before any Ray process
    starts. ``ray://HOST:PORT`` is refused as ``ray_context`` refuses it: it was accepted where
    the Ray Client extra is installed, then refused once the checkpoint was read."""
    if not isinstance(text, str):
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {checks.show_value(text)}")
    text = text.strip()
    if text == "auto":
        return text
    m = _ADDRESS.match(text)
    if m is None or not 1 <= int(m.group(3)) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT or auto, got {text!r}")
    from raymeta.errors import ClusterError
    from raymeta.orchestration.ray_runtime import parse_address

    try:
        parse_address(text)  # ray:// (Ray Client) addresses: not supported, in its words
    except ClusterError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
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
