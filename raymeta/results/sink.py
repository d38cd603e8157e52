"""Append-only, exactly-once Parquet sink: ``ROOT/sweep=NAME/part-<sha256(keys)>.parquet``.

Why parts keyed by units of work: a sweep appends the rows of a unit (say one strategy x task x
seed) under its key, and ``append_many`` puts a batch of finished units in one part (a large
sweep would otherwise leave a file per unit). A part's footer lists its keys
(``KEYS_META``: ``[[key, rows], ...]``), so ``done_keys`` reads them without the rows. The part
is written to a hidden temp file and published with ``os.link`` (atomic, fails if the name
exists), so a killed writer leaves the whole batch or nothing, and a re-run skips every key
already published: no duplicate, no missing rows. A single key's part is named after that key,
so concurrent writers of one key agree; a batch relies on one writer per dataset (sweeps and
tune runs hold their output's lock).

Part files carry no ``sweep`` column (it is the Hive directory key), the schema version and the
writer's library versions in their footer; every part has the identical ``PART_SCHEMA``, so
pandas, pyarrow and Ray Data read the whole dataset in one call. Readers ignore hidden and
``_``-prefixed names, so a leftover temp file from a kill and the marker ``_schema.json``
(schema version, columns, every distinct versions record of the dataset's writers) are harmless.
The dataset is only created by the first append.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from raymeta.errors import ConfigError, DataError
from raymeta.fileio import atomic_write_json, make_temp_file
from raymeta.results.columns import table_of
from raymeta.results.schema import (
    COLUMNS,
    PART_SCHEMA,
    SCHEMA_VERSION,
    VERSIONS_KEY,
    rows_to_table,
    versions_json,
)

SCHEMA_FILE = "_schema.json"
KEYS_META = b"raymeta.results.keys"  # schema 2: JSON [[key, rows], ...] of the part's units
KEY_META = b"raymeta.results.key"  # schema 1: the one key of the part
READABLE_VERSIONS = (1, SCHEMA_VERSION)
_SWEEP_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")


def check_sweep_name(sweep: str) -> str:
    if not isinstance(sweep, str) or not _SWEEP_RE.match(sweep):
        raise ConfigError(
            f"sweep name {sweep!r} must be 1-128 characters of letters, digits, '_', '.', '+', '-' and start with a letter or digit"
        )
    return sweep


def part_name(*keys: str) -> str:
    """The part of one key, or of a batch (its sorted keys): a name that says what it holds."""
    joined = "\n".join(sorted(keys))
    return f"part-{hashlib.sha256(joined.encode()).hexdigest()[:32]}.parquet"


def read_schema_file(root: Path) -> dict[str, Any]:
    """The dataset marker; a missing or foreign one means ``root`` is not a results dataset."""
    marker = root / SCHEMA_FILE
    if not marker.is_file():
        raise DataError(f"{root} is not a raymeta results dataset (no {SCHEMA_FILE})")
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        raise DataError(f"{marker} is unreadable or not JSON") from None
    if not isinstance(info, dict) or "schema_version" not in info:
        raise DataError(f"{marker} has no schema_version: not a raymeta results dataset")
    if isinstance(info["schema_version"], bool) or info["schema_version"] not in READABLE_VERSIONS:
        raise DataError(
            f"{root} holds results schema version {info['schema_version']}, this raymeta reads version {SCHEMA_VERSION}"
        )
    versions = info.get("versions", [])
    if not isinstance(versions, list) or not all(isinstance(v, dict) for v in versions):
        # checked here, when a tune or sweep opens its sink before Ray: the first append
        # extends this list, and an edited one was a TypeError after the first units had run
        raise DataError(
            f"{marker}: 'versions' is not a list of version records (edited?); restore it or write to a new --out"
        )
    return info


def check_part_file(part: Path) -> None:
    """A result part (``part-*.parquet``) must be a regular file: a FIFO of that name made
    ``raymeta report`` (and a resumed tune or sweep listing its parts) wait forever."""
    if not part.is_file():
        raise DataError(
            f"result part {part} is not a regular file (a FIFO, device, socket or directory "
            "of that name); remove it"
        )


def part_keys(part: Path) -> list[tuple[str, int]]:
    """``(key, rows)`` of every unit in ``part``, read from its footer (schema 1 or 2)."""
    check_part_file(part)
    try:
        meta = pq.read_schema(part).metadata or {}
    except (OSError, ValueError) as exc:
        raise DataError(f"result part {part} is unreadable: {str(exc).splitlines()[0]}") from None
    try:
        if KEYS_META in meta:
            keys = json.loads(meta[KEYS_META])
            if not isinstance(keys, list) or not all(
                isinstance(e, list)
                and len(e) == 2
                and isinstance(e[0], str)
                and isinstance(e[1], int)
                and not isinstance(e[1], bool)
                for e in keys
            ):
                raise ValueError(keys)
            return [(k, n) for k, n in keys]
        if KEY_META in meta:
            return [(meta[KEY_META].decode(), -1)]
    except ValueError:  # JSONDecodeError, UnicodeDecodeError, or the wrong shape
        raise DataError(
            f"result part {part} has an unreadable list of its units in its footer (edited?); "
            "move it out of the dataset"
        ) from None
    return []


def _check_keys(keys: Iterable[Any]) -> None:
    for key in keys:
        if not isinstance(key, str) or not key:
            raise ConfigError("result key must be a non-empty string")


def _check_keyed(sweep: str, batch: Mapping[str, Sequence[Mapping[str, Any]]]) -> None:
    _check_keys(batch)
    for key, rows in batch.items():
        for i, row in enumerate(rows):
            if row.get("sweep") != sweep:
                raise ConfigError(
                    f"result row {i} of {key!r} belongs to sweep {row.get('sweep')!r}, this sink writes sweep {sweep!r}"
                )


@dataclass(frozen=True)
class KeyedRows:
    """The rows of several keys (units) of one sweep as one table, each key's rows contiguous
    in ``keys`` order: what a sweep's worker hands its driver. Why not row dicts: a batch of
    100 units is ~8,000 rows, whose dicts cost 25 ms to pickle and unpickle and 60 ms to
    convert in the driver, per batch, on the cores the workers train on; one Arrow table
    pickles in 1-2 ms and the driver only slices, joins and writes it."""

    sweep: str
    table: pa.Table  # ``PART_SCHEMA`` columns (no ``sweep``)
    keys: tuple[tuple[str, int], ...]  # (key, rows), in table order

    @classmethod
    def of(cls, sweep: str, batch: Mapping[str, Sequence[Mapping[str, Any]]]) -> KeyedRows:
        """Row dicts (``make_row``'s) by key, checked as ``ResultSink.append_many`` checks
        them: keys non-empty strings, every row of ``sweep`` and of the schema."""
        _check_keyed(sweep, batch)
        return cls._of_checked(sweep, batch)

    @classmethod
    def _of_checked(cls, sweep: str, batch: Mapping[str, Sequence[Mapping[str, Any]]]) -> KeyedRows:
        """``of`` of a batch whose keys and sweep are checked already (``append_many``)."""
        table = rows_to_table([row for rows in batch.values() for row in rows])
        keys = tuple((k, len(rows)) for k, rows in batch.items())
        return cls(sweep, table.drop_columns(["sweep"]), keys)

    @classmethod
    def of_columns(
        cls, sweep: str, columns: Mapping[str, Sequence[Any]], keys: Sequence[tuple[str, int]]
    ) -> KeyedRows:
        """Rows already in columns (``PART_SCHEMA``'s, each key's ``rows`` in order): what a
        sweep's batch builds, typed and checked column by column (``results.columns``)."""
        names = [k for k, _ in keys]
        _check_keys(names)
        if len(set(names)) != len(names):
            raise ConfigError("result keys of one batch must be distinct")
        if any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for _, n in keys):
            raise ConfigError("result key row counts must be integers >= 0")
        if sum(n for _, n in keys) != len(columns["value"]):
            raise ConfigError("result keys do not count the rows of the columns")
        try:
            table = table_of(columns, PART_SCHEMA)
        except TypeError as exc:
            raise ConfigError(f"result rows have values of the wrong type: {exc}") from None
        return cls(check_sweep_name(sweep), table, tuple((k, int(n)) for k, n in keys))

    def __len__(self) -> int:
        return len(self.keys)

    def parts(self) -> dict[str, pa.Table]:
        """Each key's rows (zero-copy slices of ``table``)."""
        out, at = {}, 0
        for key, n in self.keys:
            out[key] = self.table.slice(at, n)
            at += n
        return out

    def rows(self) -> dict[str, list[dict[str, Any]]]:
        """Each key's rows as ``make_row`` dicts (``hparams`` without its unset fields)."""
        out = {}
        for key, part in self.parts().items():
            rows = part.to_pylist()
            for r in rows:
                r["sweep"] = self.sweep
                r["hparams"] = {k: v for k, v in r["hparams"].items() if v is not None}
            out[key] = [{c: r[c] for c in COLUMNS} for r in rows]
        return out


class ResultSink:
    """Appends rows of one sweep to a results dataset; safe to re-run after a kill."""

    def __init__(self, root: str | Path, sweep: str):
        self.root = Path(root)
        self.sweep = check_sweep_name(sweep)
        if self.root.exists() and not self.root.is_dir():
            raise DataError(f"results path {self.root} exists and is not a directory")
        if (self.root / SCHEMA_FILE).exists():
            version = read_schema_file(self.root)["schema_version"]
            if version != SCHEMA_VERSION:
                raise DataError(
                    f"{self.root} holds results schema version {version}: this raymeta reads it but "
                    f"appends only to version {SCHEMA_VERSION}; write new runs to another --out"
                )
        self.dir = self.root / f"sweep={self.sweep}"
        self._done: set[str] | None = None  # keys published, read once then kept up to date

    def _create(self) -> None:
        """Make the dataset on the first append (so a run refused before any rows leaves
        nothing) and record this writer's versions in the marker once per distinct record."""
        marker = self.root / SCHEMA_FILE
        info: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "columns": list(COLUMNS)}
        if marker.exists():
            info = read_schema_file(self.root)
        versions = json.loads(versions_json())
        seen = list(info.get("versions", []))
        if versions not in seen or not marker.exists():
            atomic_write_json(marker, {**info, "versions": [*seen, versions]})
        self.dir.mkdir(parents=True, exist_ok=True)

    def has(self, key: str) -> bool:
        return key in self.done_keys()

    def append(self, rows: Sequence[Mapping[str, Any]], key: str) -> bool:
        """Publish ``rows`` as the part for ``key``; False (and nothing written) if it exists.

        An empty ``rows`` still publishes an (empty) part, which marks the key as done.
        """
        return key in self.append_many({key: rows})

    def append_many(self, batch: Mapping[str, Sequence[Mapping[str, Any]]]) -> set[str]:
        """Publish the rows of several keys as one part; returns the keys published (keys
        already done are left out, and nothing is written when none is left)."""
        _check_keyed(self.sweep, batch)
        if len(batch) == 1 and (self.dir / part_name(*batch)).exists():
            return set()
        return self.append_keyed([KeyedRows._of_checked(self.sweep, batch)])

    def append_keyed(self, batches: Sequence[KeyedRows]) -> set[str]:
        """``append_many`` of rows already in tables (``KeyedRows``): one part of all their
        keys not yet published; returns those keys."""
        for b in batches:
            if b.sweep != self.sweep:
                raise ConfigError(
                    f"result rows belong to sweep {b.sweep!r}, this sink writes sweep {self.sweep!r}"
                )
        if self._done is None:
            self._done = self.done_keys()
        todo: dict[str, pa.Table] = {}
        for b in batches:
            for k, t in b.parts().items():
                if k in todo:
                    raise ConfigError(f"result key {k!r} appears in two batches of one append")
                if k not in self._done:
                    todo[k] = t
        if not todo:
            return set()
        table = pa.concat_tables(todo.values())
        if not table.schema.equals(PART_SCHEMA, check_metadata=False):
            table = table.cast(PART_SCHEMA)
        keys = [[k, t.num_rows] for k, t in todo.items()]
        meta = {**(PART_SCHEMA.metadata or {}), VERSIONS_KEY: versions_json().encode()}
        meta[KEYS_META] = json.dumps(keys).encode()
        table = table.replace_schema_metadata(meta)
        self._create()
        final = self.dir / part_name(*todo)
        fd, tmp = make_temp_file(self.dir, final.name)
        try:
            with os.fdopen(fd, "wb") as f:
                pq.write_table(table, f, compression="zstd")
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, final)  # atomic create-if-absent: concurrent writers of one key agree
            except FileExistsError:
                return set()
            except OSError:  # filesystems without hard links
                os.replace(tmp, final)
            self._done |= set(todo)
            return set(todo)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def done_keys(self) -> set[str]:
        """Keys whose parts are published (read from each part's footer, not its rows)."""
        return {k for part in sorted(self.dir.glob("part-*.parquet")) for k, _ in part_keys(part)}
