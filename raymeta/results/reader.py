"""Read a results dataset back as one table, refusing anything this version cannot interpret."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from raymeta.errors import DataError
from raymeta.results.schema import SCHEMA, SCHEMA_VERSION, VERSION_KEY
from raymeta.results.sink import check_sweep_name, read_schema_file


def list_sweeps(root: str | Path) -> list[str]:
    root = Path(root)
    read_schema_file(root)
    return sorted(p.name.split("=", 1)[1] for p in root.glob("sweep=*") if p.is_dir())


def _read_part(part: Path) -> pa.Table:
    try:
        pf = pq.ParquetFile(part)
        version = (pf.schema_arrow.metadata or {}).get(VERSION_KEY)
        if version != str(SCHEMA_VERSION).encode():
            shown = version.decode() if version else "none"
            raise DataError(
                f"result part {part} has schema version {shown}, this raymeta reads version {SCHEMA_VERSION}"
            )
        table = pf.read()
    except (OSError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"result part {part} is unreadable: {str(exc).splitlines()[0]}") from None
    try:
        return table.select(SCHEMA.names).cast(SCHEMA)
    except (KeyError, pa.ArrowInvalid, pa.ArrowTypeError):
        raise DataError(
            f"result part {part} does not have the results columns {SCHEMA.names}"
        ) from None


def read_results(root: str | Path, sweep: str | None = None) -> pa.Table:
    """All published rows under ``root`` (or of one sweep); hidden temp files are ignored.

    Raises ``DataError`` for a path that is not a results dataset, a foreign schema version,
    an unreadable part, or an unknown sweep. An existing but empty dataset gives an empty table.
    """
    root = Path(root)
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
        _read_part(p) for s in sweeps for p in sorted((root / f"sweep={s}").glob("part-*.parquet"))
    ]
    if not tables:
        return SCHEMA.empty_table()
    return pa.concat_tables(tables)
