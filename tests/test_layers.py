"""The one hard layering rule: the pure layers never import Ray (DESIGN.md, "Layers")."""

from __future__ import annotations

import subprocess
import sys

PURE = ("raymeta.core", "raymeta.tasks", "raymeta.priors", "raymeta.results")

SCRIPT = """
import importlib, pkgutil, sys
names = []
for pkg_name in {pure!r}:
    pkg = importlib.import_module(pkg_name)
    names.append(pkg_name)
    for info in pkgutil.walk_packages(pkg.__path__, pkg_name + "."):
        importlib.import_module(info.name)
        names.append(info.name)
leaked = sorted(m for m in sys.modules if m == "ray" or m.startswith("ray."))
print(len(names), "modules;", "ray leaked:" if leaked else "no ray", *leaked[:5])
sys.exit(1 if leaked else 0)
"""


def test_pure_layers_do_not_import_ray() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(pure=PURE)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no ray" in proc.stdout
    assert int(proc.stdout.split()[0]) >= len(PURE) + 5  # really walked the submodules


def test_probe_detects_a_leak() -> None:
    """The probe itself works: a pure layer that imported Ray would be caught."""
    script = "import ray\n" + SCRIPT.format(pure=("raymeta.core",))
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "ray leaked" in proc.stdout
