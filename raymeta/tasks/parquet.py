"""User-defined task sets stored as Parquet: one file or a directory of ``*.parquet`` files.

Schema (one row per example; ``SCHEMA_DOC`` has the details, ``task_schema(D, kind)`` is the
canonical Arrow schema, ``write_tasks`` writes it)::

    task_id: string | split: train|val|test | features: fixed_size_list<float32>[D]
    target: float (regression) or int64 (classification) | meta_split: train|val|test (optional)

``split`` is the split *within* a task; ``meta_split`` says whether the whole task is for
meta-training, meta-validation or held-out testing (a stable hash of ``task_id`` decides, 80/10/10,
when the column is absent). Every task needs train, val and test rows.

Data are streamed, never loaded whole: building the family (``scan_tasks``) reads only the key
columns (``task_id``, ``split``, ``target``, ``meta_split``; with ``full_check`` also
``features``), a bounded batch at a time, to validate the data and index, per task, its row counts
and the (file, row group) pairs holding it. A task's rows are read on demand from just those row
groups (one read per file for a whole meta-batch, filtered on ``task_id``) and kept in an LRU
cache of ``cache_tasks`` tasks. Files are found with ``pyarrow.dataset`` (hidden and ``_`` files
are skipped, so half-written temp files never count).

``sample()`` draws ``shots`` support rows from a task's train split and ``queries`` query rows
from its val split, without replacement. A task with fewer rows is an error unless
``replace=True``, which lets exactly those tasks draw with replacement.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import torch

from raymeta.errors import ConfigError, DataError
from raymeta.tasks._base import SPLITS, Kind, Split, Task, TaskBatch, TaskFamily, check_split
from raymeta.tasks._parquet_io import (
    SCHEMA_DOC,
    check_schema,
    check_splits,
    features_numpy,
    load_task_file,
    meta_split_of,
    target_numpy,
    task_schema,
    write_tasks,
)

__all__ = [
    "SCHEMA_DOC",
    "ParquetFamily",
    "TaskIndex",
    "load_task_file",
    "meta_split_of",
    "scan_tasks",
    "task_schema",
    "write_tasks",
]

Rows = dict[str, tuple[torch.Tensor, torch.Tensor]]


@dataclass
class TaskIndex:
    """What a scan learns: files, feature width, kind, and per task its rows and meta-split."""

    path: str
    files: list[str]
    width: int
    kind: Kind
    n_classes: int
    rows: dict[str, dict[str, int]] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)
    where: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # (file, row group)

    def tasks(self, split: str) -> list[str]:
        return sorted(t for t, s in self.meta.items() if s == split)


def list_files(path: str | os.PathLike[str]) -> list[str]:
    p = Path(path)
    if not p.exists():
        raise DataError(f"parquet task data {p} does not exist")
    try:
        files = sorted(ds.dataset(str(p), format="parquet").files) if p.is_dir() else [str(p)]
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{p}: cannot list Parquet files ({str(exc).splitlines()[0]})") from None
    if not files:
        raise DataError(f"{p}: no Parquet files found")
    return files


def _batches(pf: pq.ParquetFile, columns: list[str], width: int | None) -> Any:
    """(row group, record batch) pairs, a bounded number of rows at a time."""
    size = max(1024, (1 << 20) // max(width or 64, 1))
    for rg in range(pf.metadata.num_row_groups):
        for b in pf.iter_batches(batch_size=size, row_groups=[rg], columns=columns):
            yield rg, b


def scan_tasks(path: str | os.PathLike[str], full_check: bool = True) -> TaskIndex:
    """Validate and index a task set by streaming it batch by batch (never the whole set)."""
    files = list_files(path)
    width: int | None = None
    kind: Kind | None = None
    n_classes, first = 0, files[0]
    rows: dict[str, dict[str, int]] = {}
    meta: dict[str, str] = {}
    where: dict[str, list[tuple[int, int]]] = {}
    for i, f in enumerate(files):
        try:
            pf = pq.ParquetFile(f)
            cols = check_schema(pf.schema_arrow, f)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(
                f"{f}: not a readable Parquet file ({str(exc).splitlines()[0]})"
            ) from None
        if kind is not None and cols.kind != kind:
            raise DataError(f"{f}: target is {cols.kind} but {first} is {kind}")
        kind = cols.kind
        if cols.width is not None and width is not None and cols.width != width:
            raise DataError(f"{f}: features have width {cols.width} but {first} has {width}")
        width = cols.width if cols.width is not None else width
        need = ["task_id", "split", "target"] + (["meta_split"] if cols.has_meta_split else [])
        if full_check or cols.width is None:
            need.append("features")
        for rg, b in _batches(pf, need, width):
            ids = b.column("task_id")
            if ids.null_count:
                raise DataError(f"{f}: column 'task_id' has null values")
            check_splits(b.column("split"), f, ids)
            y = target_numpy(b.column("target"), kind, f, ids)
            if kind == "classification" and len(y):
                n_classes = max(n_classes, int(y.max()) + 1)
            if "features" in need:
                x = features_numpy(b.column("features"), width, f, ids)
                width = int(x.shape[1]) if len(x) else width
            counts = (
                pa.table({"t": ids, "s": b.column("split")})
                .group_by(["t", "s"])
                .aggregate([([], "count_all")])
            )
            for t, s, c in zip(
                *(counts.column(k).to_pylist() for k in ("t", "s", "count_all")), strict=True
            ):
                rows.setdefault(t, dict.fromkeys(SPLITS, 0))[s] += c
                if not where.setdefault(t, []) or where[t][-1] != (i, rg):
                    where[t].append((i, rg))
            if cols.has_meta_split:
                _merge_meta(meta, ids, b.column("meta_split"), f)
    if width is None or kind is None:
        raise DataError(f"{path}: holds no rows")
    for t, r in rows.items():
        missing = [s for s in SPLITS if r[s] == 0]
        if missing:
            raise DataError(
                f"{path}: task {t!r} has no {'/'.join(missing)} rows (every task needs train, val and test)"
            )
        meta.setdefault(t, meta_split_of(t))
    return TaskIndex(str(path), files, width, kind, n_classes, rows, meta, where)


def _merge_meta(meta: dict[str, str], ids: pa.Array, ms: pa.Array, where: str) -> None:
    if ms.null_count:
        raise DataError(f"{where}: column 'meta_split' has null values")
    pairs = pa.table({"t": ids, "m": ms}).group_by(["t", "m"]).aggregate([])
    for t, m in zip(pairs.column("t").to_pylist(), pairs.column("m").to_pylist(), strict=True):
        if m not in SPLITS:
            raise DataError(
                f"{where}: column 'meta_split' has unknown value {m!r} (task {t!r}; use train, val or test)"
            )
        if meta.setdefault(t, m) != m:
            raise DataError(f"{where}: task {t!r} has rows in meta-splits {meta[t]!r} and {m!r}")


class ParquetFamily(TaskFamily):
    name = "parquet"

    def __init__(
        self,
        path: str | None = None,
        shots: int = 10,
        queries: int = 10,
        replace: bool = False,
        n_classes: int | None = None,
        full_check: bool = True,
        cache_tasks: int = 256,
    ):
        for key, v in {"shots": shots, "queries": queries, "cache_tasks": cache_tasks}.items():
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"parquet: {key} must be an integer >= 1, got {v!r}")
        if path is None or not isinstance(path, (str, os.PathLike)) or not str(path):
            raise ConfigError(
                f"parquet: option path must name a Parquet file or directory of them, got {path!r}"
            )
        for key, b in {"replace": replace, "full_check": full_check}.items():
            if not isinstance(b, bool):
                raise ConfigError(f"parquet: {key} must be true or false, got {b!r}")
        if n_classes is not None and (
            isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1
        ):
            raise ConfigError(f"parquet: n_classes must be an integer >= 1, got {n_classes!r}")
        self.path, self.shots, self.queries, self.replace = str(path), shots, queries, replace
        self.full_check, self.cache_tasks = bool(full_check), cache_tasks
        self.index = scan_tasks(path, full_check=self.full_check)
        self.kind = self.index.kind
        self.input_shape = (self.index.width,)
        self.n_classes = n_classes
        if self.kind == "classification":
            have = self.index.n_classes
            if n_classes is not None and n_classes < have:
                raise ConfigError(f"parquet: n_classes={n_classes} but targets go up to {have - 1}")
            self.output_dim = n_classes or have
        else:
            self.output_dim = 1
        self._ids = {s: self.index.tasks(s) for s in SPLITS}
        if not self._ids["train"]:
            raise DataError(
                f"parquet: {path} has no meta-train tasks (set meta_split or add tasks)"
            )
        if not self.replace:
            for t, r in self.index.rows.items():
                for s, need, what in (("train", shots, "shots"), ("val", queries, "queries")):
                    if r[s] < need:
                        raise ConfigError(
                            f"parquet: task {t!r} has {r[s]} {s} rows, fewer than {what}={need} (lower it or pass replace=True)"
                        )
        self._cache: OrderedDict[str, Rows] = OrderedDict()

    def options(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "shots": self.shots,
            "queries": self.queries,
            "replace": self.replace,
            "n_classes": self.n_classes,
            "full_check": self.full_check,
            "cache_tasks": self.cache_tasks,
        }

    def n_tasks(self, split: Split) -> int:
        return len(self._ids[check_split(split)])

    def rows(self, task_id: str) -> Rows:
        """A task's rows per within-task split (read on demand, LRU-cached)."""
        return self.fetch([task_id])[task_id]

    def fetch(self, task_ids: list[str]) -> dict[str, Rows]:
        """Rows of several tasks; the uncached ones come from ONE read per file of just the row
        groups the index says hold them (exact even when row-group statistics cannot prune)."""
        missing = sorted({t for t in task_ids if t not in self._cache})
        got = {t: self._cache[t] for t in task_ids if t in self._cache}
        for t in got:
            self._cache.move_to_end(t)
        groups: dict[int, set[int]] = {}
        for t in missing:
            for i, rg in self.index.where[t]:
                groups.setdefault(i, set()).add(rg)
        parts: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {t: [] for t in missing}
        want = pa.array(missing, pa.string())
        for i, rgs in sorted(groups.items()):
            f = self.index.files[i]
            table = pq.ParquetFile(f).read_row_groups(
                sorted(rgs), columns=["task_id", "split", "features", "target"]
            )
            table = table.filter(pc.is_in(table["task_id"], value_set=want))
            names = table["task_id"].combine_chunks()
            x = features_numpy(table["features"], self.index.width, f, names)
            y = target_numpy(table["target"], self.kind, f, names)
            sp = np.asarray(table["split"].to_pylist())
            tid = np.asarray(names.to_pylist())
            order = np.argsort(tid, kind="stable")
            uniq, start = np.unique(tid[order], return_index=True)
            for t, lo, hi in zip(uniq.tolist(), start, [*start[1:], len(order)], strict=True):
                sel = order[lo:hi]
                parts[t].append((x[sel], y[sel], sp[sel]))
        for t in missing:
            x, y, sp = (np.concatenate([p[k] for p in parts[t]]) for k in range(3))
            rows: Rows = {}
            for s in SPLITS:
                yt = torch.from_numpy(y[sp == s].copy())
                rows[s] = (
                    torch.from_numpy(x[sp == s].copy()),
                    yt.view(-1, 1) if self.kind == "regression" else yt,
                )
            got[t] = self._cache[t] = rows
            if len(self._cache) > self.cache_tasks:
                self._cache.popitem(last=False)
        return got

    def _ids_of(self, split: Split) -> list[str]:
        ids = self._ids[check_split(split)]
        if not ids:
            raise DataError(f"parquet: {self.path} has no tasks in meta-split {split!r}")
        return ids

    def _draw(self, n_rows: int, k: int, g: torch.Generator) -> torch.Tensor:
        if n_rows >= k:
            return torch.randperm(n_rows, generator=g)[:k]
        return torch.randint(n_rows, (k,), generator=g)  # only reachable with replace=True

    def sample(self, split: Split, n_tasks: int, generator: torch.Generator) -> TaskBatch:
        ids = self._ids_of(split)
        pick = torch.randint(len(ids), (n_tasks,), generator=generator).tolist()
        loaded = self.fetch([ids[j] for j in pick])
        parts: list[list[torch.Tensor]] = [[], [], [], []]
        for j in pick:
            r = loaded[ids[j]]
            for (x, y), k, off in ((r["train"], self.shots, 0), (r["val"], self.queries, 2)):
                sel = self._draw(x.shape[0], k, generator)
                parts[off].append(x[sel])
                parts[off + 1].append(y[sel])
        if not pick:
            d = self.index.width
            y_shape: tuple[int, ...] = (1,) if self.kind == "regression" else ()
            y_dtype = torch.float32 if self.kind == "regression" else torch.int64
            return TaskBatch(
                torch.zeros(0, self.shots, d), torch.zeros(0, self.shots, *y_shape, dtype=y_dtype),
                torch.zeros(0, self.queries, d), torch.zeros(0, self.queries, *y_shape, dtype=y_dtype),
            )  # fmt: skip
        return TaskBatch(*(torch.stack(p) for p in parts))

    def task(self, split: Split, index: int) -> Task:
        ids = self._ids_of(split)
        if not 0 <= index < len(ids):
            raise ConfigError(
                f"parquet: task index {index} out of range (meta-split {split!r} has {len(ids)} tasks)"
            )
        r = self.rows(ids[index])
        return Task(
            ids[index],
            *r["train"],
            *r["val"],
            *r["test"],
            kind=self.kind,
            output_dim=self.output_dim,
        )
