"""The layering rules (DESIGN.md, "Layers"): the pure layers, the fine-tuning layer included,
never import Ray; ``orchestration`` and ``bench`` never import ``cli``; nothing imported across
packages carries an underscore; ``import raymeta`` itself loads neither torch nor Ray."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PURE = ("raymeta.core", "raymeta.tasks", "raymeta.priors", "raymeta.results", "raymeta.finetune")
ROOT = Path(__file__).resolve().parents[1] / "raymeta"

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


def _imports(path: Path) -> list[str]:
    """Every ``raymeta...`` module (and ``module.name``) a file imports, at any depth."""
    out: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("raymeta"):
            out += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.startswith("raymeta")]
    return out


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_orchestration_and_bench_never_import_cli() -> None:
    bad = [
        f"{_module(f)} imports {name}"
        for pkg in ("orchestration", "bench", "finetune", "core", "tasks", "priors", "results")
        for f in sorted((ROOT / pkg).rglob("*.py"))
        for name in _imports(f)
        if name == "raymeta.cli" or name.startswith("raymeta.cli.")
    ]
    assert not bad, bad
    assert len(list((ROOT / "orchestration").rglob("*.py"))) >= 20  # really scanned


def test_nothing_imported_across_packages_carries_an_underscore() -> None:
    """``raymeta.x._y`` may be imported only from inside ``raymeta.x`` (its own package)."""
    bad = []
    for f in sorted(ROOT.rglob("*.py")):
        mod = _module(f)
        pkg = mod if f.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for name in _imports(f):
            comps = name.split(".")
            for i, c in enumerate(comps):
                if c.startswith("_") and not c.startswith("__"):
                    if ".".join(comps[:i]) != pkg:
                        bad.append(f"{mod} imports {'.'.join(comps[: i + 1])}")
                    break
    assert not bad, sorted(set(bad))


def test_import_raymeta_loads_neither_torch_nor_ray() -> None:
    """The public API loads on first use: ``import raymeta`` (and the CLI's ``--help``) stay
    fast, and a Ray-free user of ``raymeta.fit_priors`` never loads Ray."""
    script = (
        "import sys, raymeta\n"
        "assert 'torch' not in sys.modules and 'ray' not in sys.modules\n"
        "assert set(raymeta.__all__) == {'__version__', *raymeta._API}\n"
        "raymeta.fit_priors, raymeta.FinetuneConfig, raymeta.TuneRequest\n"
        "assert 'ray' not in sys.modules, 'ray leaked'\n"
        "print(len(raymeta.__all__))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert int(proc.stdout) >= 30
