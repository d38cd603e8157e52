"""The ``raymeta`` command: a thin map from subcommands onto the Python API.

Each subcommand lives in its own module exposing ``add_parser(subparsers)`` (which sets
``func``); heavy imports (torch, ray) happen inside the handlers so ``--help`` stays fast.
User errors (``RaymetaError``) print one line and exit 2; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import select
import signal
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from raymeta import __version__
from raymeta.allocator import retain_freed_memory
from raymeta.cli._common import Parser
from raymeta.cli._config import apply_config
from raymeta.errors import DeprecatedOption, RaymetaError
from raymeta.options import apply_renamed

COMMANDS = (
    "quickstart",
    "meta_train",
    "priors",
    "tune",
    "predict",
    "sweep",
    "report",
    "bench",
    "data",
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="raymeta",
        description=(
            "Ray-distributed, population-based meta-tuner: meta-train an initialization over a "
            "task family (Ray Train), fit fine-tuning priors, then tune new tasks with a "
            "warm-started Ray Tune population (PBT by default)."
        ),
        epilog="Run 'raymeta COMMAND --help' for a command's options. Docs: README.md.",
    )
    parser.add_argument("--version", action="version", version=f"raymeta {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"raymeta.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"raymeta.cli.{name}":
                continue
            raise
        mod.add_parser(sub)
    return parser


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """A renamed flag or key is one ``raymeta: warning:`` line; other warnings as Python shows
    them."""
    if issubclass(category, DeprecatedOption):
        print(f"raymeta: warning: {' '.join(str(message).split())}", file=sys.stderr)
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


_python_show_warning = warnings.showwarning


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    warnings.showwarning = _show_warning
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    retain_freed_memory()  # this process is the command's: keep freed tensors' pages
    try:
        sub_parser = getattr(args, "_parser", None)
        if sub_parser is not None:
            args = apply_config(sub_parser, args, argv)
            apply_renamed(sub_parser, args)
        rc = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit flush
        return int(rc or 0)
    except RaymetaError as exc:
        print(f"raymeta: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except (OSError, MemoryError) as exc:  # the machine refused (disk full, no memory, EIO...)
        if isinstance(exc, BrokenPipeError) and _stdout_closed():
            return 128 + signal.SIGPIPE  # the reader left (raymeta report | head): quietly
        if debug():
            raise
        if isinstance(exc, OSError):
            where = f" ({exc.filename})" if exc.filename else ""
            why = f"{exc.strerror or _one_line(exc)}{where}"
        else:
            why = "out of memory"
        print(f"raymeta: error: {' '.join(why.split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("raymeta: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug in raymeta, not bad input: exit 1, traceback on request
        if debug():
            raise
        print(
            f"raymeta: internal error: {type(exc).__name__}: {_one_line(exc)} "
            "(set RAYMETA_DEBUG=1 for the traceback, and please report it)",
            file=sys.stderr,
        )
        return 1


def debug() -> bool:
    """Whether ``RAYMETA_DEBUG`` asks for tracebacks: set, and not ``0``, ``false``, ``no`` or
    ``off`` (as ``RAYMETA_KEEP_FREED_MEMORY`` reads them). ``RAYMETA_DEBUG=0`` turned tracebacks
    on: any non-empty value did."""
    value = os.environ.get("RAYMETA_DEBUG", "").strip().lower()
    return value not in ("", "0", "false", "no", "off")


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (``raymeta report | head``): polling
    its fd reports an error then. It is pointed at /dev/null, so neither a later write nor
    the interpreter's exit flush prints "Exception ignored ... BrokenPipeError". Before, a
    closed pipe was "raymeta: error: Broken pipe" and exit 2, as if the input were bad."""
    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        events = poller.poll(0)
    except (OSError, ValueError, AttributeError):  # no real fd (a captured stdout)
        return False
    if not any(ev & select.POLLERR for _, ev in events):
        return False
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    return True


def _one_line(exc: BaseException) -> str:
    """The message on one line whatever it holds (user text such as a path may carry line
    breaks), cut to a readable length."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 1000 else text[:997] + "..."


if __name__ == "__main__":
    sys.exit(main())
