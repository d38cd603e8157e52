"""``KEY=VALUE`` options (``--family-option``, ``--task-option``, ...) shared by the CLI, the
benchmarks and config files: one parser, so every command reads them the same way."""

from __future__ import annotations

from typing import Any

from raymeta import checks
from raymeta.bounded_yaml import loads
from raymeta.errors import ConfigError


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
