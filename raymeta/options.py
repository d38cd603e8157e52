"""Options shared by the CLI, the benchmarks and config files: ``KEY=VALUE`` options
(``--family-option``, ``--task-option``, ...), renamed flags (``renamed``) and range-checked
number flags (``int_arg``, ``float_arg``), one way for every command."""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable
from typing import Any

from raymeta import checks
from raymeta.bounded_yaml import loads
from raymeta.errors import ConfigError, DeprecatedOption


def parse_options(items: Any, what: str, flag: str | None = None) -> dict[str, Any]:
    """``["k=v", ...]`` (values parsed as bounded YAML scalars/lists) or a mapping from a
    config file; anything else (a number, a list of non-strings) is a one-line error, and so
    is a key given twice (``--task-option k=1 --task-option k=2``: never silently the last).
    ``flag``: how errors name the option (default ``--WHAT-option``)."""
    flag = flag or f"--{what}-option"
    if items is None:
        return {}
    if isinstance(items, dict):
        return checks.mapping(f"{what}_options", items)
    if isinstance(items, str):
        items = [items]
    if not isinstance(items, list):
        raise ConfigError(
            f"{what}_options must be a mapping or a list of KEY=VALUE, got {checks.show_value(items)}"
        )
    out: dict[str, Any] = {}
    given: dict[str, str] = {}  # key -> its text, to name both values of a repeated key
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"{flag} expects KEY=VALUE, got {checks.show_value(item)}")
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{flag} expects KEY=VALUE, got {item!r}")
        text = raw.strip() or "''"
        if key in given:
            raise ConfigError(f"{flag} {key} given twice ({given[key]}, {text})")
        given[key] = text
        try:
            out[key] = loads(raw, f"{flag} {key}") if raw.strip() else ""
        except ConfigError as exc:
            if "not valid YAML" not in str(exc):
                raise
            out[key] = raw
    return out


def renamed(args: argparse.Namespace, old: str, new: str, default: Any = None) -> None:
    """A deprecated flag ``--old`` (or config key) still works as ``--new``, with a one-line
    ``raymeta: warning:``; both at once is an error unless they agree (``default``: the value
    ``--new`` has when not given)."""
    value = getattr(args, old, None)
    if value is None:
        return
    flag, new_flag = _shown(old), "--" + new.replace("_", "-")
    if getattr(args, new, None) not in (None, default, value):
        raise ConfigError(f"give {new_flag}, not both it and the deprecated {flag}")
    warnings.warn(f"{flag} is deprecated, use {new_flag}", DeprecatedOption, stacklevel=2)
    setattr(args, new, value)
    setattr(args, old, None)


def _shown(dest: str) -> str:
    """How a deprecated spelling reads in its warning: ``--old-flag``, or for a positional
    (dest ``positional_out``) ``the positional OUT``."""
    if dest.startswith("positional_"):
        return f"the positional {dest.removeprefix('positional_').upper()}"
    return "--" + dest.replace("_", "-")


def add_renamed(
    parser: argparse.ArgumentParser, old: str, new: str, **kwargs: Any
) -> argparse.Action:
    """Declare ``old`` a deprecated spelling of the flag ``new``: ``--old`` (also a config key
    ``old``) or, for a positional that became a flag, ``OUT`` (an optional positional). It
    still works; ``apply_renamed`` (run by the CLI after the config file) moves its value to
    ``new`` with one warning. Declared, not handled per command, so one check over the parser
    tree can see every alias (tests/test_cli_conventions.py)."""
    new_dest = new.lstrip("-").replace("-", "_")
    kwargs.setdefault("help", argparse.SUPPRESS)  # --help shows one name per idea
    if old.startswith("-"):
        if kwargs.get("action") == "store_true":
            kwargs.setdefault("default", None)  # None: not given, so it never overrides --new
        act = parser.add_argument(old, **kwargs)
    else:
        kwargs.setdefault("metavar", old)
        act = parser.add_argument(f"positional_{old.lower()}", nargs="?", **kwargs)
    act.renamed_to = new_dest  # type: ignore[attr-defined]
    return act


def apply_renamed(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every ``add_renamed`` alias of ``parser`` that was given: its value moves to the new
    name, with one ``raymeta: warning:`` line each."""
    for act in parser._actions:  # noqa: SLF001 - argparse exposes no public accessor
        new = getattr(act, "renamed_to", None)
        if new is not None:
            renamed(args, act.dest, new, parser.get_default(new))


def _typed(kind: str, check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """An argparse ``type=``: a flag's text (or a config file's value, already typed by YAML)
    through ``check``; failures become ``ArgumentTypeError`` so argparse prints one line."""

    def parse(value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            try:
                value = int(text, 10) if kind == "int" else float(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected {kind_word}, got {text!r}") from None
        try:
            return check(value)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    kind_word = "an integer" if kind == "int" else "a number"
    parse.__name__ = kind
    return parse


def int_arg(low: int | None = None, high: int | None = checks.MAX_INT) -> Callable[[Any], int]:
    """``type=`` for an integer flag within ``[low, high]`` (bools and floats refused)."""
    return _typed("int", lambda v: checks.integer("value", v, low, high))


def float_arg(
    low: float | None = None, high: float | None = None, low_open: bool = False
) -> Callable[[Any], float]:
    """``type=`` for a finite number within ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    return _typed("float", lambda v: checks.number("value", v, low, high, low_open))
