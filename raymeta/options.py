"""Options shared by the CLI, the benchmarks and config files: ``KEY=VALUE`` options
(``--family-option``, ``--task-option``, ...) and renamed flags (``renamed``), one way for every
command."""

from __future__ import annotations

import argparse
import warnings
from typing import Any

from raymeta import checks
from raymeta.bounded_yaml import loads
from raymeta.errors import ConfigError, DeprecatedOption


def parse_options(items: Any, what: str) -> dict[str, Any]:
    """``["k=v", ...]`` (values parsed as bounded YAML scalars/lists) or a mapping from a
    config file; anything else (a number, a list of non-strings) is a one-line error."""
    flag = f"--{what}-option"
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
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"{flag} expects KEY=VALUE, got {checks.show_value(item)}")
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = loads(raw, f"{flag} {key.strip()}") if raw.strip() else ""
        except ConfigError as exc:
            if "not valid YAML" not in str(exc):
                raise
            out[key.strip()] = raw
    return out


def renamed(args: argparse.Namespace, old: str, new: str) -> None:
    """A deprecated flag ``--old`` (or config key) still works as ``--new``, with a one-line
    ``raymeta: warning:``; both at once is an error unless they agree."""
    value = getattr(args, old, None)
    if value is None:
        return
    flag, new_flag = "--" + old.replace("_", "-"), "--" + new.replace("_", "-")
    if getattr(args, new, None) not in (None, value):
        raise ConfigError(f"give {new_flag}, not both it and the deprecated {flag}")
    warnings.warn(f"{flag} is deprecated, use {new_flag}", DeprecatedOption, stacklevel=2)
    setattr(args, new, value)
    setattr(args, old, None)
