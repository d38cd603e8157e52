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


BUILTIN_FAMILIES = ("sinusoid", "digits", "omniglot", "parquet")
# name -> constructor; a user may add to it in-process, but what a checkpoint stores for such a
# family is its import path (``raymeta.plugins.canonical``), so Ray workers can rebuild it
FAMILIES: dict[str, Callable[..., TaskFamily]] = {
    "sinusoid": _sinusoid,
    "digits": _digits,
    "omniglot": _omniglot,
    "parquet": _parquet,
}


def builtin_family_name(cls: object) -> str | None:
    """The built-in name of a built-in family class (``Sinusoid`` -> ``sinusoid``), else None."""
    for name in BUILTIN_FAMILIES:
        mod = {"parquet": "raymeta.tasks.parquet"}.get(name, f"raymeta.tasks.{name}")
        if getattr(cls, "__module__", None) == mod and getattr(cls, "name", None) == name:
            return name
    return None


def make_family(spec: FamilySpec | str | Callable[..., TaskFamily], **options: Any) -> TaskFamily:
    """Build a family from a spec (or a name plus options): a built-in name, a plugin name, an
    import path ``package.module:Class`` or (from Python) the class itself; errors are one-line
    ``ConfigError``s, including an exception the user's constructor raises."""
    from raymeta.plugins import canonical, construct, short_name

    if not isinstance(spec, FamilySpec):
        spec = FamilySpec(canonical("family", spec) if callable(spec) else spec, options)
    family = construct("family", spec.name, **spec.options)
    label = short_name(spec.name)
    if not isinstance(family, TaskFamily):
        raise ConfigError(
            f"task family {label!r} must build a raymeta.tasks.TaskFamily, got a "
            f"{type(family).__name__}"
        )
    return family


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
