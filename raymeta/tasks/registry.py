"""Name -> family constructor; the one place the CLI and checkpoints resolve families."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from raymeta.errors import ConfigError
from raymeta.tasks._base import FamilySpec, TaskFamily


def _sinusoid(**kw: Any) -> TaskFamily:
    from raymeta.tasks.sinusoid import Sinusoid

    return Sinusoid(**kw)


def _digits(**kw: Any) -> TaskFamily:
    from raymeta.tasks.digits import Digits

    return Digits(**kw)


def _omniglot(**kw: Any) -> TaskFamily:
    from raymeta.tasks.omniglot import Omniglot

    return Omniglot(**kw)


def _parquet(**kw: Any) -> TaskFamily:
    from raymeta.tasks.parquet import ParquetFamily

    return ParquetFamily(**kw)


FAMILIES: dict[str, Callable[..., TaskFamily]] = {
    "sinusoid": _sinusoid,
    "digits": _digits,
    "omniglot": _omniglot,
    "parquet": _parquet,
}


def make_family(spec: FamilySpec | str, **options: Any) -> TaskFamily:
    """Build a family from a spec (or a name plus options); errors are one-line ``ConfigError``s."""
    if isinstance(spec, str):
        spec = FamilySpec(spec, options)
    try:
        ctor = FAMILIES[spec.name]
    except KeyError:
        raise ConfigError(
            f"unknown task family {spec.name!r} (choose from {', '.join(FAMILIES)})"
        ) from None
    try:
        return ctor(**spec.options)
    except TypeError as exc:
        raise ConfigError(f"bad options for family {spec.name!r}: {exc}") from None
