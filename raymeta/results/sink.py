"""Append-only, exactly-once Parquet sink: ``ROOT/sweep=NAME/part-<sha256(key)>.parquet``.

Why one part file per key: a sweep appends the rows of one unit of work (say one
strategy x task x seed) under one key. The part is written to a hidden temp file and published
with ``os.link`` (atomic, fails if the name exists), so a killed sweep leaves either the whole
part or nothing, and a re-run skips every key already published: no duplicate, no missing rows.
Readers ignore hidden files, so a leftover temp file from a kill is harmless. The dataset
(``_schema.json``, the sweep folder) is only created by the first append.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from raymeta.errors import ConfigError, DataError
from raymeta.fileio import atomic_write_json, make_temp_file
from raymeta.results.schema import COLUMNS, SCHEMA_VERSION, rows_to_table

SCHEMA_FILE = "_schema.json"
KEY_META = b"raymeta.results.key"
_SWEEP_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")


def check_sweep_name(sweep: str) -> str:
    if not isinstance(sweep, str) or not _SWEEP_RE.match(sweep):
        raise ConfigError(
            f"sweep name {sweep!r} must be 1-128 characters of letters, digits, '_', '.', '+', '-' and start with a letter or digit"
        )
    return sweep


def part_name(key: str) -> str:
    return f"part-{hashlib.sha256(key.encode()).hexdigest()[:32]}.parquet"


def read_schema_file(root: Path) -> dict[str, Any]:
    """The dataset marker; a missing or foreign one means ``root`` is not a results dataset."""
    import json

    marker = root / SCHEMA_FILE
    if not marker.is_file():
        raise DataError(f"{root} is not a raymeta results dataset (no {SCHEMA_FILE})")
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        raise DataError(f"{marker} is unreadable or not JSON") from None
    if not isinstance(info, dict) or "schema_version" not in info:
        raise DataError(f"{marker} has no schema_version: not a raymeta results dataset")
    if info["schema_version"] != SCHEMA_VERSION:
        raise DataError(
            f"{root} holds results schema version {info['schema_version']}, this raymeta reads version {SCHEMA_VERSION}"
        )
    return info


class ResultSink:
    """Appends rows of one sweep to a results dataset; safe to re-run after a kill."""

    def __init__(self, root: str | Path, sweep: str):
        self.root = Path(root)
        self.sweep = check_sweep_name(sweep)
        if self.root.exists() and not self.root.is_dir():
            raise DataError(f"results path {self.root} exists and is not a directory")
        if (self.root / SCHEMA_FILE).exists():
            read_schema_file(self.root)
        self.dir = self.root / f"sweep={self.sweep}"

    def _create(self) -> None:
        """Make the dataset on the first append, so a run refused before any rows leaves nothing."""
        if not (self.root / SCHEMA_FILE).exists():
            atomic_write_json(
                self.root / SCHEMA_FILE,
                {"schema_version": SCHEMA_VERSION, "columns": list(COLUMNS)},
            )
        self.dir.mkdir(parents=True, exist_ok=True)

    def has(self, key: str) -> bool:
        return (self.dir / part_name(key)).exists()

    def append(self, rows: Sequence[Mapping[str, Any]], key: str) -> bool:
        """Publish ``rows`` as the part for ``key``; False (and nothing written) if it exists.

        An empty ``rows`` still publishes an (empty) part, which marks the key as done.
        """
        if not key:
            raise ConfigError("result key must be a non-empty string")
        final = self.dir / part_name(key)
        if final.exists():
            return False
        for i, row in enumerate(rows):
            if row.get("sweep") != self.sweep:
                raise ConfigError(
                    f"result row {i} belongs to sweep {row.get('sweep')!r}, this sink writes sweep {self.sweep!r}"
                )
        table = rows_to_table(rows)
        meta = dict(table.schema.metadata or {})
        meta[KEY_META] = key.encode()
        table = table.replace_schema_metadata(meta)
        self._create()
        fd, tmp = make_temp_file(self.dir, final.name)
        try:
            with os.fdopen(fd, "wb") as f:
                pq.write_table(table, f, compression="zstd")
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, final)  # atomic create-if-absent: concurrent writers of one key agree
            except FileExistsError:
                return False
            except OSError:  # filesystems without hard links
                os.replace(tmp, final)
            return True
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def done_keys(self) -> set[str]:
        """Keys whose parts are published (read from each part's footer, not its rows)."""
        keys: set[str] = set()
        for part in sorted(self.dir.glob("part-*.parquet")):
            try:
                meta = pq.read_schema(part).metadata or {}
            except (OSError, ValueError) as exc:
                raise DataError(
                    f"result part {part} is unreadable: {str(exc).splitlines()[0]}"
                ) from None
            if KEY_META in meta:
                keys.add(meta[KEY_META].decode())
        return keys
