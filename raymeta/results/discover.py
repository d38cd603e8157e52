"""Find the results datasets under the paths a user names, and read them as one table.

Why: ``raymeta tune`` writes a dataset per run (``RUN/results/_schema.json``) and ``raymeta
sweep`` one per sweep, so comparing runs means reading many datasets. ``raymeta report`` and
``raymeta.report`` accept any of: a dataset, one of its ``sweep=NAME`` folders (that sweep
only), a tune run directory, a directory holding such things at any depth, or a glob pattern
(expanded here too, for a pattern the shell passed through quoted). A path with nothing under
it is one ``DataError`` naming it.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from raymeta import checks
from raymeta.errors import ConfigError, DataError
from raymeta.results.sink import SCHEMA_FILE, check_sweep_name

# The columns a report needs; the others (hyperparameters, versions) may change shape between
# datasets, so they are dropped before datasets are concatenated.
REPORT_SCHEMA = pa.schema(
    [
        ("sweep", pa.string()),
        ("strategy", pa.string()),
        ("task", pa.string()),
        ("seed", pa.int64()),
        ("trial", pa.string()),
        ("step", pa.int64()),
        ("metric", pa.string()),
        ("value", pa.float64()),
        ("wall_s", pa.float64()),
    ]
)
_GLOB = frozenset("*?[")
# Never searched: hidden folders and Ray's experiment storage (many files, never a dataset).
_SKIP = frozenset({"ray_results", "__pycache__"})


@dataclass(frozen=True)
class Dataset:
    """A results dataset root and the sweeps to read from it (None: all of them)."""

    root: Path
    sweeps: frozenset[str] | None = None


def expand(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """The paths, with every glob pattern that names no existing path expanded (sorted)."""
    out: list[Path] = []
    for p in paths:
        text = os.fspath(checks.path("a results path", p))
        if not isinstance(text, str) or not text.strip() or "\x00" in text:
            raise ConfigError(f"a results path must be a non-empty path, got {text!r}")
        text = os.path.expanduser(text)
        if _GLOB & set(text) and not os.path.lexists(text):
            hits = sorted(glob.glob(text, recursive=True))
            if not hits:
                raise DataError(f"no path matches {text}")
            out += [Path(h) for h in hits]
        else:
            out.append(Path(text))
    return out


def datasets_under(path: Path) -> list[Dataset]:
    """Every dataset at or below ``path`` (a dataset's own folders are not searched further)."""
    if not path.exists():
        raise DataError(f"results path {path} does not exist")
    if path.is_file():
        if path.name != SCHEMA_FILE:
            raise DataError(f"{path} is a file, not a directory of raymeta results")
        path = path.parent
    if (path / SCHEMA_FILE).exists():
        return [Dataset(path)]
    if path.name.startswith("sweep=") and (path.parent / SCHEMA_FILE).exists():
        return [Dataset(path.parent, frozenset({path.name.split("=", 1)[1]}))]
    found = []
    for here, dirs, files in os.walk(path, onerror=None):
        if SCHEMA_FILE in files:
            found.append(Dataset(Path(here)))
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _SKIP)
    if not found:
        raise DataError(
            f"no raymeta results under {path} (no {SCHEMA_FILE} in it or below it: "
            "write some with 'raymeta tune' or 'raymeta sweep')"
        )
    return found


def find_datasets(
    paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
) -> list[Dataset]:
    """The datasets under all ``paths`` (globs expanded), each once, sorted by path (so the
    same runs named in any order or through any parent give the same report); a dataset named
    whole and through a sweep folder is read whole."""
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    if not isinstance(paths, Sequence):  # report(3) was "TypeError: 'int' object is not iterable"
        raise ConfigError(
            f"results paths must be a path or a list of them, got {checks.show_value(paths)}"
        )
    if not paths:
        raise ConfigError("name at least one results path")
    merged: dict[Path, frozenset[str] | None] = {}
    roots: dict[Path, Path] = {}
    for path in expand(paths):
        for ds in datasets_under(path):
            key = ds.root.resolve()
            roots.setdefault(key, ds.root)
            if key in merged:
                old = merged[key]
                merged[key] = None if old is None or ds.sweeps is None else old | ds.sweeps
            else:
                merged[key] = ds.sweeps
    return sorted((Dataset(roots[k], s) for k, s in merged.items()), key=lambda d: str(d.root))


def read_datasets(datasets: Sequence[Dataset], sweep: str | None = None) -> pa.Table:
    """Rows of every dataset (only ``sweep`` if given) with the ``REPORT_SCHEMA`` columns."""
    from raymeta.results.reader import read_results

    if sweep is not None:
        check_sweep_name(sweep)
    tables = []
    seen: set[str] = set()
    for ds in datasets:
        table = read_results(ds.root)
        try:
            table = table.select(REPORT_SCHEMA.names).cast(REPORT_SCHEMA)
        except (KeyError, pa.ArrowInvalid, pa.ArrowTypeError):
            raise DataError(f"{ds.root} lacks the results columns {REPORT_SCHEMA.names}") from None
        seen.update(table["sweep"].unique().to_pylist())
        wanted = ds.sweeps if sweep is None else {sweep} & (ds.sweeps or {sweep})
        if wanted is not None:
            table = table.filter(pc.is_in(table["sweep"], pa.array(sorted(wanted), pa.string())))
        tables.append(table)
    if sweep is not None and sweep not in seen:
        where = ", ".join(str(ds.root) for ds in datasets)
        raise DataError(
            f"sweep {sweep!r} not found in {where} (sweeps: {', '.join(sorted(seen)) or 'none'})"
        )
    return pa.concat_tables(tables) if tables else REPORT_SCHEMA.empty_table()
