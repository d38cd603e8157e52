"""``--config FILE.yaml``: every flag of a subcommand can also come from a YAML mapping.

Flags given on the command line win over the file. Keys must be exact option names (``meta_batch``
or ``meta-batch``, not both; unknown keys are an error, so a typo in a config never silently falls back to
a default), and values must have the flag's type: a list or mapping where one value is expected,
a bool where a number is, a float where an integer is (never truncated), a quoted number or a
number for a string option are one-line errors naming the key, also for keys a flag overrides.
Values go through the flag's own ``type=`` check, so a config file accepts what the command line
accepts (and, for ``--feature-columns``, a YAML list of names as well as ``A,B,C``). Required
options are checked after the file is applied (``cli._common.defer_required``), so a required
value may come from the file alone.
"""

from __future__ import annotations

import argparse
from typing import Any

from raymeta.bounded_yaml import load_yaml_mapping
from raymeta.checks import show_value
from raymeta.cli._common import column_names
from raymeta.errors import ConfigError

# argparse bookkeeping that set_defaults puts on the namespace: never settable from a file
_INTERNAL = ("help", "config", "func", "_parser")


def _explicit_dests(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The options given on the command line, in either form (``--tasks 30``, ``--tasks=30``;
    abbreviations never reach here: the parser refuses them). A deprecated alias and its new
    name count as one option, so a flag in either spelling wins over the file in either."""
    given = {a.split("=", 1)[0] for a in argv if a.startswith("-")}
    actions = parser._actions  # noqa: SLF001 - argparse exposes no public accessor
    explicit = {act.dest for act in actions if any(opt in given for opt in act.option_strings)}
    for act in actions:
        new = getattr(act, "renamed_to", None)  # options.add_renamed
        if new is not None and (act.dest in explicit or new in explicit):
            explicit |= {act.dest, new}
    return explicit


def _coerce(act: argparse.Action, key: str, value: Any, where: str) -> Any:
    """``value`` checked against what ``act`` takes on the command line."""
    bad = f"{where}: {key!r}"
    if isinstance(act, (argparse._StoreTrueAction, argparse._StoreFalseAction)):  # noqa: SLF001
        if not isinstance(value, bool):
            raise ConfigError(f"{bad} must be true or false, got {show_value(value)}")
        return value
    if isinstance(act, argparse._AppendAction):  # noqa: SLF001 - repeatable K=V flags
        if isinstance(value, str):
            return [value]
        if isinstance(value, dict) or (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
        ):
            return value
        raise ConfigError(
            f"{bad} must be a mapping of option: value or a list of KEY=VALUE, got {show_value(value)}"
        )
    if value is None:
        if act.default is not None:
            raise ConfigError(f"{bad} needs a value (leave it out for the default)")
        return None
    takes_names = act.type is column_names  # --feature-columns: A,B,C or a YAML list
    if takes_names and isinstance(value, list):
        if not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{bad} must be a list of column names, got {show_value(value)}")
        try:
            return column_names(value)
        except argparse.ArgumentTypeError as exc:
            raise ConfigError(f"{bad}: {exc}") from None
    if isinstance(value, (dict, list, tuple, set)):
        raise ConfigError(f"{bad} takes one value, got {show_value(value)}")
    if act.nargs not in (None, argparse.OPTIONAL):
        raise ConfigError(f"{bad} cannot be set from a config file")
    kind = getattr(act.type, "__name__", "")
    if act.type not in (None, str) and kind not in ("int", "float"):
        # a flag with its own parser (a size such as 4GiB) reads a YAML number as the command
        # line reads the same digits: memory_budget: 5 is --memory-budget 5
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise ConfigError(f"{bad} must be a string, got {show_value(value)}")
    elif act.type in (None, str):
        if not isinstance(value, str):
            raise ConfigError(f"{bad} must be a string, got {show_value(value)}")
    elif kind == "int":  # YAML types the value: a quoted '3' is a string, 2.5 is no integer
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{bad} must be an integer, got {show_value(value)}")
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{bad} must be a number, got {show_value(value)}")
    if act.type is not None:
        try:
            value = act.type(value)  # type: ignore[misc,operator]
        except (TypeError, ValueError, OverflowError, argparse.ArgumentTypeError) as exc:
            # OverflowError: a YAML integer of hundreds of digits for a float option (float()
            # of it overflows, where the same digits on the command line read as inf)
            why = str(exc) if isinstance(exc, argparse.ArgumentTypeError) else "bad value"
            raise ConfigError(f"{bad}: {why} ({show_value(value)})") from None
    if act.choices is not None and value not in act.choices:
        raise ConfigError(f"{bad} must be one of {', '.join(map(str, act.choices))}, got {value!r}")
    return value


def apply_config(
    parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str]
) -> argparse.Namespace:
    """Fill ``args`` from ``args.config`` for every flag not given explicitly on the command line."""
    path = getattr(args, "config", None)
    if not path:
        return args
    data = load_yaml_mapping(path)
    actions = {
        a.dest: a
        for a in parser._actions  # noqa: SLF001
        if a.dest not in _INTERNAL and a.option_strings
    }
    explicit = _explicit_dests(parser, argv)
    where = f"config file {path}"
    seen: dict[str, Any] = {}  # dest -> the key that set it: one option, one key
    for key, value in data.items():
        dest = str(key).replace("-", "_")
        if dest not in actions or str(key).startswith("_"):
            raise ConfigError(f"{where}: unknown option {key!r}")
        if dest in seen:
            raise ConfigError(
                f"{where}: {seen[dest]!r} and {key!r} are the same option, given twice"
            )
        seen[dest] = key
        value = _coerce(actions[dest], key, value, where)  # checked even where a flag wins
        if dest not in explicit:
            setattr(args, dest, value)
    return args
