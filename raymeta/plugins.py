"""Plug points: a user's model factory or task family, named so that any process rebuilds it.

Ray Train workers, Tune trials and sweep tasks run in other processes (on a cluster, on other
machines). A Python object cannot travel to them inside ``meta.json``; a *name* can. So every
model and family is named one of three ways, and ``resolve`` turns the name back into the
object in whichever process needs it:

* a built-in name (``mlp``, ``conv4``; ``sinusoid``, ``digits``, ``omniglot``, ``parquet``);
* a name registered by an installed package under the entry-point group ``raymeta.models`` or
  ``raymeta.families`` (``[project.entry-points."raymeta.models"] tiny = "mypkg.nets:Tiny"``),
  so a pip-installed plugin needs no flags;
* an import path ``package.module:attribute`` (``attribute`` may be dotted, e.g. ``Outer.Inner``).

``canonical`` is what gets stored: built-in names stay names, everything else is stored as its
import path, so a checkpoint does not depend on a registration done in the process that wrote
it (``MODELS["tiny"] = Tiny`` in a driver is invisible to a Ray worker; ``mymod:Tiny`` is not).

Trust: loading a checkpoint imports the modules its spec names, exactly as running a script
would. An import path therefore has to name code that is *already importable* here (nothing is
added to ``sys.path`` from a file), its module must not be part of Python's standard library,
and the object must be defined inside the package it is imported from, so a crafted
``meta.json`` cannot turn ``os:system`` or ``builtins:eval`` into a "model factory".

Local Ray workers start in another directory than the driver, so a module the driver imports
from its working directory or from a ``sys.path`` entry added at run time is not importable
there. ``import_roots`` lists the directories the driver found a spec's modules in, and
``add_import_roots`` puts them on a worker's ``sys.path`` before it resolves the spec. On a
multi-node cluster those directories do not exist on the other nodes: ship the module with the
job (``ray job submit --working-dir .`` or ``--runtime-env-json '{"py_modules": [...]}'``).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from importlib import metadata
from typing import Any, Literal

from raymeta.errors import ConfigError, RaymetaError

Kind = Literal["model", "family"]
GROUPS: dict[Kind, str] = {"model": "raymeta.models", "family": "raymeta.families"}
_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
# packages that are never a plugin: an import path into them (raymeta's own helpers, torch.load,
# a pickle loader) could only be a crafted meta.json calling a library function with its options
INFRASTRUCTURE = frozenset(
    {
        "raymeta",
        "torch",
        "numpy",
        "ray",
        "pyarrow",
        "pandas",
        "scipy",
        "sklearn",
        "cloudpickle",
        "dill",
        "joblib",
        "yaml",
        "setuptools",
        "pip",
        "pkg_resources",
        "importlib_metadata",
        "hypothesis",
        "pytest",
        "_pytest",
        "matplotlib",
    }
)


def is_import_path(name: str) -> bool:
    """True for ``package.module:attribute`` (the form a worker can always import)."""
    return ":" in name


def short_name(name: str) -> str:
    """A readable label for a model or family name: the attribute of an import path."""
    return name.rsplit(":", 1)[-1].rsplit(".", 1)[-1] if is_import_path(name) else name


def entry_points(kind: Kind) -> dict[str, str]:
    """Registered plugin names -> their import paths (installed packages' entry points)."""
    try:
        eps = metadata.entry_points(group=GROUPS[kind])
    except Exception:  # a broken distribution's metadata must not break raymeta
        return {}
    return {ep.name: ep.value.replace(" ", "") for ep in eps}


def _builtins(kind: Kind) -> Mapping[str, Callable[..., Any]]:
    if kind == "model":
        from raymeta.core.models import MODELS

        return MODELS
    from raymeta.tasks.registry import FAMILIES

    return FAMILIES


def _builtin_names(kind: Kind) -> tuple[str, ...]:
    if kind == "model":
        from raymeta.core.models import BUILTIN_MODELS

        return BUILTIN_MODELS
    from raymeta.tasks.registry import BUILTIN_FAMILIES

    return BUILTIN_FAMILIES


def _what(kind: Kind) -> str:
    return "model" if kind == "model" else "task family"


def _choices(kind: Kind) -> str:
    names = sorted(set(_builtins(kind)) | set(entry_points(kind)))
    what = "package.module:factory" if kind == "model" else "package.module:Class"
    return f"choose from {', '.join(names)}, or give an import path {what}"


def import_object(kind: Kind, path: str) -> Any:
    """The object an import path names, with every failure a one-line ``ConfigError``."""
    if not _PATH.match(path):
        raise ConfigError(f"{kind} {path!r} is not an import path: write package.module:attribute")
    modname, attr = path.split(":", 1)
    top = modname.split(".", 1)[0]
    if top in sys.stdlib_module_names or top == "builtins":
        raise ConfigError(
            f"{kind} {path!r} names the standard library module {modname!r}; "
            f"an import path must name your own {kind} code"
        )
    if top in INFRASTRUCTURE or any(p.startswith("_") for p in attr.split(".")):
        raise ConfigError(
            f"{_what(kind)} {path!r} does not name a {_what(kind)} of your own "
            f"({'a private name' if top not in INFRASTRUCTURE else f'{top} is not a plugin'}; "
            "built-in models and families go by their names, e.g. mlp, sinusoid)"
        )
    try:
        module = importlib.import_module(modname)
    except ModuleNotFoundError as exc:
        missing = exc.name or modname
        raise ConfigError(
            f"cannot import {kind} {path!r}: no module named {missing!r} "
            "(is it installed, on PYTHONPATH, or shipped in the Ray job's runtime_env?)"
        ) from None
    except Exception as exc:  # the user's module raised while importing
        raise ConfigError(
            f"cannot import {kind} {path!r}: importing {modname!r} raised "
            f"{type(exc).__name__}: {_first_line(exc)}"
        ) from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(
                f"cannot import {kind} {path!r}: {modname!r} has no {attr!r}"
            ) from None
    if not callable(obj):
        raise ConfigError(f"{kind} {path!r} is not callable (it is a {type(obj).__name__})")
    _check_kind(kind, path, obj)
    owner = str(getattr(obj, "__module__", "") or "")
    if owner.split(".", 1)[0] != top:
        raise ConfigError(
            f"{kind} {path!r} is defined in {owner or 'another module'!r}, not in package {top!r}; "
            "name it where it is defined"
        )
    return obj


def _check_kind(kind: Kind, path: str, obj: Any) -> None:
    """Only what can be a model factory or a family may be called with options from a file:
    a family is a ``TaskFamily`` subclass; a model is an ``nn.Module`` subclass or a plain
    Python function (never a builtin, a method or some other callable class)."""
    if kind == "family":
        from raymeta.tasks.base import TaskFamily

        if not (isinstance(obj, type) and issubclass(obj, TaskFamily)):
            raise ConfigError(f"task family {path!r} is not a subclass of raymeta.tasks.TaskFamily")
        return
    from torch import nn

    if isinstance(obj, type):
        if not issubclass(obj, nn.Module):
            raise ConfigError(f"model {path!r} is a class but not a torch.nn.Module")
    elif not isinstance(obj, types.FunctionType):
        raise ConfigError(
            f"model {path!r} must be an nn.Module class or a function returning one, "
            f"not a {type(obj).__name__}"
        )


def resolve(kind: Kind, name: str) -> Callable[..., Any]:
    """The factory (model) or constructor (family) ``name`` stands for, in this process."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{kind} must be a name or an import path, got {name!r}")
    if is_import_path(name):
        return import_object(kind, name)  # type: ignore[no-any-return]
    table = _builtins(kind)
    if name in table:
        return table[name]
    eps = entry_points(kind)
    if name in eps:
        return import_object(kind, eps[name])  # type: ignore[no-any-return]
    raise ConfigError(f"unknown {_what(kind)} {name!r} ({_choices(kind)})")


def construct(kind: Kind, name: str, *args: Any, **options: Any) -> Any:
    """Call the factory or class ``name`` stands for; whatever it raises is one line: a
    ``TypeError`` as bad options, anything else as a failed build naming the object."""
    ctor = resolve(kind, name)
    what = "model" if kind == "model" else "family"
    label = short_name(name)
    try:
        return ctor(*args, **options)
    except RaymetaError:
        raise
    except TypeError as exc:
        raise ConfigError(f"bad options for {what} {label!r}: {_first_line(exc)}") from None
    except Exception as exc:  # the user's code raised: one line, never a traceback
        raise ConfigError(
            f"{_what(kind)} {label!r} failed to build: {type(exc).__name__}: {_first_line(exc)}"
        ) from None


def name_of(kind: Kind, obj: Callable[..., Any]) -> str:
    """The import path of a factory or family class given from Python (refusing objects that
    another process could not import: ones defined in ``__main__`` or inside a function); a
    built-in model or family class given as an object keeps its built-in name."""
    for name, registered in _builtins(kind).items():
        if registered is obj and name in _builtin_names(kind):
            return name
    if kind == "family":
        from raymeta.tasks.registry import builtin_family_name

        builtin = builtin_family_name(obj)
        if builtin is not None:
            return builtin
    module = getattr(obj, "__module__", None)
    qual = getattr(obj, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qual, str):
        raise ConfigError(
            f"{kind} {obj!r} has no importable name: pass a class or a module-level function"
        )
    if "<locals>" in qual or "<lambda>" in qual:
        raise ConfigError(
            f"{kind} {qual} is defined inside a function; Ray workers cannot import it: "
            "define it at module level"
        )
    return f"{module}:{qual}"


def canonical(kind: Kind, ref: str | Callable[..., Any]) -> str:
    """What to store for ``ref`` (a name, an import path, or the object itself): built-in names
    as they are, anything else as the import path that rebuilds it in another process."""
    if not isinstance(ref, str):
        if not callable(ref):
            raise ConfigError(f"{kind} must be a name, an import path or a callable, got {ref!r}")
        return name_of(kind, ref)
    if not ref:
        raise ConfigError(f"{kind} must not be empty")
    if is_import_path(ref):
        import_object(kind, ref)
        return ref
    if ref in _builtin_names(kind):
        return ref
    obj = resolve(kind, ref)  # a runtime registration or an entry point: store where it lives
    eps = entry_points(kind)
    return eps[ref] if ref in eps and ref not in _builtins(kind) else name_of(kind, obj)


def check_portable(kind: Kind, name: str) -> None:
    """Refuse, before Ray starts, a name that a Ray worker cannot import (``__main__:X``)."""
    if name.startswith("__main__:"):
        raise ConfigError(
            f"{kind} {short_name(name)!r} is defined in the script being run (__main__); Ray "
            "workers cannot import it: move it to a module and name it package.module:"
            f"{name.split(':', 1)[1]}"
        )


def import_roots(names: Iterable[str]) -> list[str]:
    """The ``sys.path`` directories this process imported the named modules from.

    Passed to Ray workers (``add_import_roots``) so that a local Ray finds a module the driver
    imported from its working directory or a path it added at run time."""
    roots: list[str] = []
    for name in names:
        if not is_import_path(name):
            continue
        top = name.split(":", 1)[0].split(".", 1)[0]
        module = sys.modules.get(top)
        where = getattr(module, "__file__", None) if module else None
        paths = list(getattr(module, "__path__", []) or []) if module else []
        if where:
            base = os.path.dirname(os.path.abspath(where))
            root = os.path.dirname(base) if os.path.basename(where) == "__init__.py" else base
        elif paths:
            root = os.path.dirname(os.path.abspath(paths[0]))
        else:
            continue
        if root not in roots:
            roots.append(root)
    return roots


def add_import_roots(roots: Iterable[str]) -> None:
    """Append the driver's import roots that exist here to this process's ``sys.path``."""
    for root in roots:
        if isinstance(root, str) and root not in sys.path and os.path.isdir(root):
            sys.path.append(root)


def check_label(what: str, name: str) -> str:
    """A candidate name: letters, digits, ``_`` and ``-`` (it names files and table values)."""
    if not isinstance(name, str) or not _NAME.match(name) or len(name) > 64:
        raise ConfigError(
            f"{what} {name!r} must start with a letter and hold only letters, digits, _ and - "
            "(at most 64 characters)"
        )
    return name


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def _culprit(frame: Any, names: list[str]) -> str | None:
    """The label of the user's object a traceback frame runs in, if the frame is user code:
    its module is one the names import, and ``self`` (a method) or the function itself tells
    which of the names sharing that module it belongs to."""
    module = str(frame.f_globals.get("__name__", ""))
    here = [n for n in names if n.split(":", 1)[0] == module]
    if not here:
        return None
    owner = frame.f_locals.get("self")
    mro = {c.__qualname__ for c in type(owner).__mro__} if owner is not None else set()
    for n in here:
        attr = n.split(":", 1)[1]
        if attr in mro or attr == frame.f_code.co_name:
            return short_name(n)
    return short_name(here[0])


@contextlib.contextmanager
def blame(names: Iterable[str], where: str) -> Iterator[None]:
    """Re-raise an exception whose traceback passes through the user's own model or family
    code as a one-line ``ConfigError`` naming it: a bug in a plugin fails every rerun the same
    way, so a Ray worker must not report it as a crash that a rerun would resume from."""
    paths = [n for n in names if is_import_path(n)]
    try:
        yield
    except RaymetaError:
        raise
    except Exception as exc:
        tb = exc.__traceback__
        culprit = None
        while tb is not None and paths:
            culprit = _culprit(tb.tb_frame, paths) or culprit
            tb = tb.tb_next
        if culprit is not None:  # the innermost user frame: where the bug is
            raise ConfigError(
                f"{culprit!r} raised {type(exc).__name__} {where}: {_first_line(exc)}"
            ) from None
        raise
