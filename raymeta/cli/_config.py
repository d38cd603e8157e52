"""``--config FILE.yaml``: every flag of a subcommand can also come from a YAML mapping.

Flags given on the command line win over the file; unknown keys are an error, so a typo in
a config never silently falls back to a default.
"""

from __future__ import annotations

import argparse

from raymeta._yaml import load_yaml_mapping
from raymeta.errors import ConfigError


def _explicit_dests(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    given = {a.split("=", 1)[0] for a in argv if a.startswith("-")}
    return {
        act.dest
        for act in parser._actions  # noqa: SLF001 - argparse exposes no public accessor
        if any(opt in given for opt in act.option_strings)
    }


def apply_config(
    parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str]
) -> argparse.Namespace:
    """Fill ``args`` from ``args.config`` for every flag not given explicitly on the command line."""
    path = getattr(args, "config", None)
    if not path:
        return args
    data = load_yaml_mapping(path)
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}  # noqa: SLF001
    explicit = _explicit_dests(parser, argv)
    for key, value in data.items():
        dest = str(key).replace("-", "_")
        if dest not in actions:
            raise ConfigError(f"config file {path}: unknown option {key!r}")
        if dest in explicit:
            continue
        act = actions[dest]
        if act.type is not None and value is not None and not isinstance(value, (dict, list)):
            try:
                value = act.type(value)  # type: ignore[misc,operator]
            except (TypeError, ValueError):
                raise ConfigError(f"config file {path}: bad value {value!r} for {key!r}") from None
        if act.choices is not None and value not in act.choices:
            raise ConfigError(
                f"config file {path}: {key!r} must be one of {', '.join(map(str, act.choices))}"
            )
        setattr(args, dest, value)
    return args
