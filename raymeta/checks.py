"""Typed checks for user-supplied values: one-line ``ConfigError`` on a wrong type or range.

Every boundary (config dataclasses, family and model options, CLI flags, YAML config values)
goes through these, so the Python API and the CLI refuse the same inputs with the same words.
``bool`` is never accepted where a number is expected (``True`` is an ``int`` in Python, and
``shots: yes`` in a YAML file must not mean one shot), a float is never silently truncated to
an int (``shots=2.5``), and NaN / infinity are refused wherever a finite number is needed.

``memory_limit`` is the machine's physical memory: requests whose estimated allocation exceeds
it are refused up front with the size they would need (``check_fits``) instead of dying in an
allocation traceback or driving the host into swap.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

from raymeta.errors import ConfigError

MAX_INT = 2**63 - 1  # what torch and numpy seeds and sizes hold


def integer(name: str, v: Any, low: int | None = None, high: int | None = MAX_INT) -> int:
    """``v`` as an ``int`` within ``[low, high]``; bools, floats and strings are refused."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{name} must be an integer, got {show_value(v)}")
    if low is not None and v < low:
        raise ConfigError(f"{name} must be >= {low}, got {v}")
    if high is not None and v > high:
        raise ConfigError(f"{name} must be <= {high}, got {v}")
    return int(v)


def number(
    name: str,
    v: Any,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> float:
    """``v`` as a finite ``float`` within ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"{name} must be a number, got {show_value(v)}")
    try:
        f = float(v)
    except OverflowError:
        raise ConfigError(f"{name} must be a finite number, got {show_value(v)}") from None
    if not math.isfinite(f):
        raise ConfigError(f"{name} must be a finite number, got {v}")
    if low is not None and (f <= low if low_open else f < low):
        raise ConfigError(f"{name} must be {'>' if low_open else '>='} {low:g}, got {v:g}")
    if high is not None and f > high:
        raise ConfigError(f"{name} must be <= {high:g}, got {v:g}")
    return f


def boolean(name: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{name} must be true or false, got {show_value(v)}")
    return v


def string(name: str, v: Any, choices: tuple[str, ...] | None = None) -> str:
    if not isinstance(v, str):
        raise ConfigError(f"{name} must be a string, got {show_value(v)}")
    if choices is not None and v not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {v!r}")
    return v


def path(name: str, v: Any) -> str | os.PathLike[str]:
    """``v`` if it names a path (a non-empty ``str`` or ``os.PathLike``): an int or ``None``
    given to an API function that reads or writes a path was a ``TypeError`` from ``os.fspath``
    deep inside it ("expected str, bytes or os.PathLike object")."""
    if not isinstance(v, (str, os.PathLike)) or not isinstance(os.fspath(v), str):
        raise ConfigError(f"{name} must be a path (str or pathlib.Path), got {show_value(v)}")
    if not os.fspath(v) or "\0" in os.fspath(v):
        raise ConfigError(f"{name} must be a non-empty path, got {show_value(v)}")
    return v


def mapping(name: str, v: Any) -> dict[str, Any]:
    """A dict with string keys (family / model / task options)."""
    if not isinstance(v, Mapping):
        raise ConfigError(f"{name} must be a mapping of option: value, got {show_value(v)}")
    for k in v:
        if not isinstance(k, str):
            raise ConfigError(f"{name}: option names must be strings, got {show_value(k)}")
    return dict(v)


def plain_data(name: str, v: Any, max_values: int = 10_000) -> Any:
    """Refuse anything but JSON-able plain data (str, int, float, bool, None, lists, string-keyed
    dicts) of at most ``max_values`` values with finite numbers: options end up in ``meta.json``
    and in fingerprints, and a structure of shared references (a YAML alias bomb built through
    the Python API) must be refused before anything walks all of it."""
    count = 0
    stack = [v]
    while stack:
        x = stack.pop()
        count += 1
        if count > max_values:
            raise ConfigError(f"{name} holds more than {max_values} values")
        if isinstance(x, dict):
            for k in x:
                if not isinstance(k, str):
                    raise ConfigError(f"{name}: option names must be strings, got {show_value(k)}")
            stack.extend(x.values())
        elif isinstance(x, (list, tuple)):
            stack.extend(x)
        elif isinstance(x, float):
            if not math.isfinite(x):
                raise ConfigError(f"{name}: numbers must be finite, got {x}")
        elif x is not None and not isinstance(x, (str, int, bool)):
            raise ConfigError(f"{name}: unsupported value {show_value(x)}")
    return v


def show_value(v: Any) -> str:
    """A short one-line rendering of a bad value and its type."""
    text = repr(v)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(v).__name__})"


def memory_limit() -> int:
    """Bytes of physical memory on this machine (what no single allocation plan may exceed)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 2**40


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} EiB"  # pragma: no cover


def check_fits(what: str, need_bytes: float, hint: str = "") -> None:
    """Refuse a request whose estimated memory exceeds the machine's physical memory."""
    have = memory_limit()
    if need_bytes > have:
        extra = f" ({hint})" if hint else ""
        raise ConfigError(
            f"{what} needs about {fmt_bytes(need_bytes)} of memory, more than this machine's "
            f"{fmt_bytes(have)}{extra}"
        )
