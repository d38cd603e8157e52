"""Name -> family constructor; the one place the CLI and checkpoints resolve families."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from raymeta.errors import ConfigError
from raymeta.tasks.base import FamilySpec, TaskFamily


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


# options a fixed held-out task may override when it is tuned: split sizes change the data the
# task holds, never the shapes a checkpoint's models were built for (ways, shots, image size do)
SPLIT_OPTIONS = ("task_shots", "val_size", "test_size")


def resize_splits(
    spec: FamilySpec, sizes: Mapping[str, Any] | None, what: str = "--task-option"
) -> FamilySpec:
    """``spec`` with some of its fixed tasks' split sizes replaced (``SPLIT_OPTIONS`` only)."""
    sizes = check_split_options(sizes, what)
    return FamilySpec(spec.name, {**spec.options, **sizes}) if sizes else spec


def check_split_options(sizes: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    """``sizes`` as a dict; a key outside ``SPLIT_OPTIONS`` is a one-line ``ConfigError``."""
    sizes = dict(sizes or {})
    bad = sorted(set(sizes) - set(SPLIT_OPTIONS))
    if bad:
        raise ConfigError(
            f"{what} {bad[0]!r} cannot be overridden (only {', '.join(SPLIT_OPTIONS)})"
        )
    return sizes
