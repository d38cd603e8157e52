"""Read a results dataset back as one table, refusing anything this version cannot interpret.

Parts of schema version 2 are read as they are; parts of version 1 (a ``sweep`` column,
``hparams`` as JSON text, a per-row ``versions`` column) are converted on read, so an old
sweep's results still report. Either way the ``sweep`` column comes from the part's folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from raymeta import checks
from raymeta.errors import ConfigError, DataError
from raymeta.results.schema import (
    HPARAMS_TYPE,
    PART_SCHEMA,
    SCHEMA,
    SCHEMA_VERSION,
    VERSION_KEY,
    hparams_dict,
)
from raymeta.results.sink import (
    READABLE_VERSIONS,
    check_part_file,
    check_sweep_name,
    read_schema_file,
)


def list_sweeps(root: str | Path) -> list[str]:
    """The sweeps of the dataset at ``root``: its ``sweep=NAME`` folders. A folder whose NAME
    the sink could never have written (``sweep=`` with an empty name, a name with spaces...)
    is a ``DataError``, as an unreadable part is: reading it as a sweep ``''`` would report
    rows no ``--sweep`` can select."""
    root = Path(root)
    read_schema_file(root)
    names = []
    for p in sorted(root.glob("sweep=*")):
        if not p.is_dir():
            continue
        name = p.name.split("=", 1)[1]
        try:
            check_sweep_name(name)
        except ConfigError:
            what = "an empty sweep name" if not name else f"the sweep name {name!r}"
            raise DataError(
                f"results dataset {root}: folder {p.name!r} has {what}; a sweep folder is "
                "sweep=NAME, NAME 1-128 letters, digits, '_', '.', '+', '-' starting with a "
                "letter or digit (rename or remove the folder)"
            ) from None
        names.append(name)
    return sorted(names)


def dataset_versions(root: str | Path) -> list[dict[str, Any]]:
    """Every distinct library-versions record of the dataset's writers (from ``_schema.json``;
    each part's own record is in its footer, key ``raymeta.results.versions``)."""
    return list(read_schema_file(Path(root)).get("versions", []))


def _from_v1(table: pa.Table, part: Path) -> pa.Table:
    """A schema-1 part's columns as schema 2: hparams JSON -> struct, versions dropped."""
    try:
        hp = [hparams_dict(h) for h in table.column("hparams").to_pylist()]
    except ConfigError as exc:
        raise DataError(f"result part {part} (schema version 1): {exc}") from None
    idx = table.schema.get_field_index("hparams")
    return table.set_column(idx, "hparams", pa.array(hp, type=HPARAMS_TYPE))


def _read_part(part: Path, sweep: str) -> pa.Table:
    check_part_file(part)
    try:
        pf = pq.ParquetFile(part)
        raw = (pf.schema_arrow.metadata or {}).get(VERSION_KEY, b"none").decode()
        if raw not in {str(v) for v in READABLE_VERSIONS}:
            raise DataError(
                f"result part {part} has schema version {raw}, this raymeta reads version {SCHEMA_VERSION}"
            )
        table = pf.read()
    except (OSError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"result part {part} is unreadable: {str(exc).splitlines()[0]}") from None
    try:
        if raw == "1":
            table = _from_v1(table.select(PART_SCHEMA.names), part)
        table = table.select(PART_SCHEMA.names).cast(PART_SCHEMA)
    except (KeyError, pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        raise DataError(
            f"result part {part} does not have the results columns {PART_SCHEMA.names}"
        ) from None
    column = pa.array([sweep] * table.num_rows, pa.string())
    return table.add_column(0, SCHEMA.field("sweep"), column).replace_schema_metadata(
        SCHEMA.metadata
    )


def read_results(root: str | Path, sweep: str | None = None) -> pa.Table:
    """All published rows under ``root`` (or of one sweep) as a ``SCHEMA`` table; hidden temp
    files are ignored.

    Raises ``DataError`` for a path that is not a results dataset, a foreign schema version,
    an unreadable part, or an unknown sweep. An existing but empty dataset gives an empty table.
    """
    root = Path(checks.path("root", root))  # an int was a TypeError from os.fspath
    if not root.is_dir():
        raise DataError(f"results directory {root} does not exist")
    sweeps = list_sweeps(root)
    if sweep is not None:
        check_sweep_name(sweep)
        if sweep not in sweeps:
            raise DataError(
                f"sweep {sweep!r} not found in {root} (sweeps: {', '.join(sweeps) or 'none'})"
            )
        sweeps = [sweep]
    tables = [
        _read_part(p, s)
        for s in sweeps
        for p in sorted((root / f"sweep={s}").glob("part-*.parquet"))
    ]
    if not tables:
        return SCHEMA.empty_table()
    return pa.concat_tables(tables)
