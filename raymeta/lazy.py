"""Package attributes that load on first use (PEP 562), shared by ``raymeta``,
``raymeta.finetune`` and ``raymeta.results``.

Why: ``import raymeta`` and the CLI's ``--help`` must not pay for torch, pyarrow or Ray, yet
the public names should be one attribute away (``raymeta.tune``, ``raymeta.results.report``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(package: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``where[name]`` is the module (absolute, or
    relative to ``package`` with a leading dot) that defines ``name``."""

    def getattr_(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = where[name]
        target = importlib.import_module(module if not module.startswith(".") else package + module)
        return getattr(target, name)

    return getattr_
