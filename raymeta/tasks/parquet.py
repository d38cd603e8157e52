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

Episodes (``sample()``) draw support rows from a task's train split and query rows from its val
split, without replacement. Regression: ``shots`` support and ``queries`` query rows. Classification
is N-way K-shot: ``ways`` of the task's classes (all of them by default, the fewest any sampled task
has), each with exactly ``shots`` support and ``queries`` query rows (labels stay the stored class
ids). A task with fewer rows is an error unless ``replace=True``, which lets exactly those tasks
draw with replacement.

Fixed tasks (``task(split, i)``: what ``raymeta tune``, sweeps and evaluation use) take the
split-size options of the built-in families, ``task_shots``, ``val_size`` and ``test_size``
(``None``, the default, keeps the split as stored). Setting ``task_shots`` and/or ``val_size``
re-splits the task's *labelled* rows -- its stored train rows then val rows, in stored order --
by a permutation seeded by the task id (SHA-256 and splitmix64: the same on every machine and in
every process, never Python's ``hash()``) into ``task_shots`` train and ``val_size`` val rows;
with only one of them set, the other split takes the rest (at least one row). Regression counts
rows; classification counts per class (like digits' N-way K-shot sizes): every class of the
labelled rows gets ``task_shots`` train and ``val_size`` val rows. Test rows are never moved into
train or val: ``test_size`` only keeps the first ``test_size`` test rows (per class for
classification), in stored order. Asking a task for more rows than it has is a one-line
``ConfigError`` naming the task and the counts, raised when the family is built (from the scanned
counts, before any row is read). Episodes (``sample()``) always use the stored splits, so these
options never change what meta-training sees, and ``raymeta tune --task-option val_size=20
--task parquet:TASK_ID`` works on a checkpoint's Parquet family.

Shaped features (images): a feature shape declared in the schema metadata (``SHAPE_KEY``, written
by ``write_tasks`` and ``raymeta data convert --shape``) or by the ``shape`` option makes
``input_shape`` that shape and every tensor come back ``[N, *shape]``, so ``conv4`` can train on
Parquet images. Plain tables with named columns convert with ``convert_table`` (``raymeta data
convert``). ``OPTIONS_DOC`` documents the family's options (``raymeta data --help`` prints it).
"""

from __future__ import annotations

import hashlib
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
from raymeta.tasks._parquet_io import (
    MAX_CLASSES,
    SCHEMA_DOC,
    SHAPE_KEY,
    Converted,
    FeatureReader,
    atomic_file,
    check_schema,
    check_shape,
    check_splits,
    check_string_columns,
    convert_table,
    features_numpy,
    load_task_file,
    meta_split_of,
    parse_shape,
    show_shape,
    target_numpy,
    task_schema,
    write_tasks,
)
from raymeta.tasks.base import SPLITS, Kind, Split, Task, TaskBatch, TaskFamily, check_split

__all__ = [
    "MAX_CLASSES",
    "OPTIONS_DOC",
    "SCHEMA_DOC",
    "SHAPE_KEY",
    "Converted",
    "FeatureReader",
    "ParquetFamily",
    "TaskIndex",
    "atomic_file",
    "convert_table",
    "load_task_file",
    "meta_split_of",
    "parse_shape",
    "resplit_order",
    "scan_tasks",
    "show_shape",
    "task_schema",
    "write_tasks",
]

OPTIONS_DOC = {
    "path": "a Parquet task set: one file or a directory of *.parquet files (required)",
    "shots": "support rows per episode; per class for classification (N-way K-shot), default 10",
    "queries": "query rows per episode; per class for classification, default 10",
    "ways": "classification: classes per episode (default: the fewest any meta-train/val task has)",
    "shape": "feature shape, e.g. [1,8,8] or 1x8x8 (default: the file's declared shape, else [D])",
    "replace": "let tasks with too few rows draw with replacement (default false)",
    "n_classes": "classification: output units (default: the largest class id + 1)",
    "full_check": "scan every feature value when the family is built (default true)",
    "cache_tasks": "tasks whose rows are kept in memory (LRU), default 256",
    "task_shots": "fixed tasks (tune, eval; also --task-option): train rows (per class if classification), "
    "re-split from stored train+val rows, seeded by the task id (default: as stored)",
    "val_size": "fixed tasks: val rows (per class if classification), re-split likewise; with one of "
    "task_shots/val_size set, the other split takes the rest (default: as stored)",
    "test_size": "fixed tasks: only the first test_size test rows (per class if classification); "
    "test rows never move to train/val (default: all)",
}

Rows = dict[str, tuple[torch.Tensor, torch.Tensor]]
MAX_ROWS_OPTION = 1_000_000  # shots / queries / cache_tasks: larger would only exhaust memory


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
    shape: tuple[int, ...] | None = None  # declared in the files' schema metadata
    # classification: per task and within-task split, rows per class id
    class_rows: dict[str, dict[str, dict[int, int]]] = field(default_factory=dict)

    def tasks(self, split: str) -> list[str]:
        return sorted(t for t, s in self.meta.items() if s == split)


def list_files(path: str | os.PathLike[str]) -> list[str]:
    p = Path(path)
    if not p.exists():
        raise DataError(f"parquet task data {p} does not exist")
    if not p.is_dir() and not p.is_file():  # a FIFO: reading its footer waited forever
        raise DataError(f"{p}: not a regular file or directory (a FIFO, device or socket)")
    try:
        files = sorted(ds.dataset(str(p), format="parquet").files) if p.is_dir() else [str(p)]
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{p}: cannot list Parquet files ({str(exc).splitlines()[0]})") from None
    if not files:
        raise DataError(f"{p}: no Parquet files found")
    return files


def _batches(pf: pq.ParquetFile, columns: list[str], width: int | None) -> Any:
    """(row group, record batch) pairs of about 2**20 feature values (4 MiB) at a time."""
    size = max(1, min(65536, (1 << 20) // max(width or 64, 1)))
    for rg in range(pf.metadata.num_row_groups):
        for b in pf.iter_batches(batch_size=size, row_groups=[rg], columns=columns):
            yield rg, b


def scan_tasks(path: str | os.PathLike[str], full_check: bool = True) -> TaskIndex:
    """Validate and index a task set by streaming it batch by batch (never the whole set)."""
    files = list_files(path)
    width: int | None = None
    kind: Kind | None = None
    n_classes, first = 0, files[0]
    shape: tuple[int, ...] | None = None
    shape_file = first
    class_rows: dict[str, dict[str, dict[int, int]]] = {}
    rows: dict[str, dict[str, int]] = {}
    meta: dict[str, str] = {}
    where: dict[str, list[tuple[int, int]]] = {}
    dups = _CrossFileRows()
    n_rows = 0
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
        if cols.shape is not None:
            if shape is not None and cols.shape != shape:
                raise DataError(
                    f"{f}: feature shape {show_shape(cols.shape)} but {shape_file} declares {show_shape(shape)}"
                )
            shape, shape_file = cols.shape, f
        need = ["task_id", "split", "target"] + (["meta_split"] if cols.has_meta_split else [])
        if full_check or cols.width is None:
            need.append("features")
        for rg, b in _batches(pf, need, width):
            ids = b.column("task_id")
            if ids.null_count:
                raise DataError(f"{f}: column 'task_id' has null values")
            check_string_columns(b, f)
            check_splits(b.column("split"), f, ids)
            y = target_numpy(b.column("target"), kind, f, ids)
            if kind == "classification" and len(y):
                n_classes = max(n_classes, int(y.max()) + 1)
            if "features" in need:
                x = features_numpy(b.column("features"), width, f, ids)
                width = int(x.shape[1]) if len(x) else width
                if len(files) > 1:
                    dups.add(i, ids, b.column("split"), x, y)
            n_rows += b.num_rows
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
            if kind == "classification":
                per = (
                    pa.table({"t": ids, "s": b.column("split"), "y": pa.array(y)})
                    .group_by(["t", "s", "y"])
                    .aggregate([([], "count_all")])
                )
                for t, s, c, n in zip(
                    *(per.column(k).to_pylist() for k in ("t", "s", "y", "count_all")),
                    strict=True,
                ):
                    by = class_rows.setdefault(t, {sp: {} for sp in SPLITS})[s]
                    by[c] = by.get(c, 0) + n
            if cols.has_meta_split:
                _merge_meta(meta, ids, b.column("meta_split"), f)
    if width is None or kind is None or n_rows == 0:
        raise DataError(f"{path}: holds no rows")
    if shape is not None:
        check_shape(shape, width, str(shape_file))
    dup = dups.duplicated_task()
    if dup is not None:
        task, a, b = dup
        raise DataError(
            f"{path}: task {task!r} has identical rows in {files[a]} and {files[b]} (a file copied twice?)"
        )
    for t, r in rows.items():
        missing = [s for s in SPLITS if r[s] == 0]
        if missing:
            raise DataError(
                f"{path}: task {t!r} has no {'/'.join(missing)} rows (every task needs train, val and test)"
            )
        meta.setdefault(t, meta_split_of(t))
    for t, per_split in sorted(class_rows.items()):
        # a one-class task has nothing to learn: its cross-entropy is 0 from the first step, so
        # meta-training "converged" at once and tuning it measured nothing (was accepted)
        seen = sorted({c for s in SPLITS for c in per_split[s]})
        if len(seen) < 2:
            raise DataError(
                f"{path}: task {t!r} has one class ({seen[0]}) only; classification needs at least 2 classes per task"
            )
    return TaskIndex(str(path), files, width, kind, n_classes, rows, meta, where, shape, class_rows)


class _CrossFileRows:
    """Spots rows repeated across files (two copies of one file double every task's rows).

    Each row is reduced to a 64-bit hash of (task, split, feature bits, target bits), kept with
    its task and file (16 bytes a row); a hash seen for one task in two files is a duplicate.
    Repeats inside one file are the user's data and are kept.
    """

    def __init__(self) -> None:
        self.codes: dict[str, int] = {}
        self.names: list[str] = []
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._mult: dict[int, np.ndarray] = {}

    def _weights(self, width: int) -> np.ndarray:
        if width not in self._mult:
            rng = np.random.default_rng(0x5EED)
            self._mult[width] = rng.integers(1, 2**63, size=width, dtype=np.uint64) * 2 + 1
        return self._mult[width]

    def _code(self, task: str) -> int:
        if task not in self.codes:
            self.codes[task] = len(self.names)
            self.names.append(task)
        return self.codes[task]

    def add(self, file: int, ids: pa.Array, split: pa.Array, x: np.ndarray, y: np.ndarray) -> None:
        if not len(x):
            return
        enc = pc.dictionary_encode(ids)
        local = np.asarray([self._code(t) for t in enc.dictionary.to_pylist()], dtype=np.int64)
        task = local[enc.indices.to_numpy(zero_copy_only=False)]
        sp = pc.index_in(split, value_set=pa.array(SPLITS)).to_numpy(zero_copy_only=False)
        bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
        with np.errstate(over="ignore"):
            h = (bits * self._weights(x.shape[1])).sum(axis=1, dtype=np.uint64)
            yb = np.ascontiguousarray(y).view(np.uint32 if y.dtype == np.float32 else np.uint64)
            h = _mix(h ^ _mix(yb.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)))
            h = _mix(h + sp.astype(np.uint64))
        self.parts.append((task.astype(np.int32), h, np.full(len(h), file, np.int32)))

    def duplicated_task(self) -> tuple[str, int, int] | None:
        """(task, file a, file b) of one row present in two files, or None."""
        if not self.parts:
            return None
        task, h, file = (np.concatenate([p[k] for p in self.parts]) for k in range(3))
        order = np.lexsort((file, h, task))
        task, h, file = task[order], h[order], file[order]
        hit = (task[1:] == task[:-1]) & (h[1:] == h[:-1]) & (file[1:] != file[:-1])
        if not hit.any():
            return None
        j = int(np.argmax(hit))
        return self.names[int(task[j])], int(file[j]), int(file[j + 1])


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads every input bit over the 64-bit hash."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def resplit_order(task_id: str, n: int) -> np.ndarray:
    """The permutation of a task's ``n`` labelled rows its fixed task re-splits them by: keyed by
    the task id (SHA-256, then splitmix64 per row), the same in every process and on every machine."""
    seed = int.from_bytes(
        hashlib.sha256(b"raymeta.resplit\0" + task_id.encode()).digest()[:8], "big"
    )
    with np.errstate(over="ignore"):
        keys = _mix(np.uint64(seed) + np.arange(n, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15))
    return np.argsort(keys, kind="stable")


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
    """Your own tasks from Parquet (see the module docstring; ``OPTIONS_DOC`` lists the options)."""

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
        ways: int | None = None,
        shape: Any = None,
        task_shots: int | None = None,
        val_size: int | None = None,
        test_size: int | None = None,
        **unknown: Any,
    ):
        if unknown:
            raise ConfigError(
                f"parquet: unknown option {sorted(unknown)[0]!r} (valid: {', '.join(OPTIONS_DOC)})"
            )
        for key, v in {"shots": shots, "queries": queries, "cache_tasks": cache_tasks}.items():
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_ROWS_OPTION:
                raise ConfigError(
                    f"parquet: {key} must be an integer in 1..{MAX_ROWS_OPTION}, got {v!r}"
                )
        sizes = {"task_shots": task_shots, "val_size": val_size, "test_size": test_size}
        for key, size in sizes.items():
            if size is not None and (
                isinstance(size, bool)
                or not isinstance(size, int)
                or not 1 <= size <= MAX_ROWS_OPTION
            ):
                raise ConfigError(
                    f"parquet: {key} must be an integer in 1..{MAX_ROWS_OPTION} (or null: as stored), got {size!r}"
                )
        if path is None or not isinstance(path, (str, os.PathLike)) or not str(path):
            raise ConfigError(
                f"parquet: option path must name a Parquet file or directory of them, got {path!r}"
            )
        for key, b in {"replace": replace, "full_check": full_check}.items():
            if not isinstance(b, bool):
                raise ConfigError(f"parquet: {key} must be true or false, got {b!r}")
        for key, n in {"n_classes": n_classes, "ways": ways}.items():
            # 1-way episodes have a 0 loss (nothing to tell apart), as digits and omniglot say
            if n is not None and (
                isinstance(n, bool) or not isinstance(n, int) or not 2 <= n <= MAX_CLASSES
            ):
                raise ConfigError(
                    f"parquet: {key} must be an integer in 2..{MAX_CLASSES}, got {n!r}"
                )
        declared = None if shape is None else parse_shape(shape, "parquet: shape", ConfigError)
        self.path, self.shots, self.queries, self.replace = str(path), shots, queries, replace
        self.full_check, self.cache_tasks = bool(full_check), cache_tasks
        self.task_shots, self.val_size, self.test_size = task_shots, val_size, test_size
        self.index = scan_tasks(path, full_check=self.full_check)
        self.kind = self.index.kind
        if declared is not None:
            check_shape(declared, self.index.width, "parquet: shape", ConfigError)
        self.shape = declared
        self.input_shape = declared or self.index.shape or (self.index.width,)
        self.n_classes = n_classes
        if self.kind == "classification":
            have = self.index.n_classes
            if n_classes is not None and n_classes < have:
                raise ConfigError(f"parquet: n_classes={n_classes} but targets go up to {have - 1}")
            self.output_dim = n_classes or have
        else:
            self.output_dim = 1
            if ways is not None:
                raise ConfigError("parquet: ways applies to classification task sets only")
        self._ids = {s: self.index.tasks(s) for s in SPLITS}
        if not self._ids["train"]:
            raise DataError(
                f"parquet: {path} has no meta-train tasks (set meta_split or add tasks)"
            )
        sampled = self._ids["train"] + self._ids["val"]  # the tasks episodes come from
        self._classes: dict[str, torch.Tensor] = {}
        self.ways: int | None = None
        if self.kind == "classification":
            self.ways = self._check_ways(sampled, ways)
        elif not self.replace:
            for t in sampled:
                r = self.index.rows[t]
                for s, need, what in (("train", shots, "shots"), ("val", queries, "queries")):
                    if r[s] < need:
                        raise ConfigError(
                            f"parquet: task {t!r} has {r[s]} {s} rows, fewer than {what}={need} (lower it or pass replace=True)"
                        )
        self._check_split_sizes()
        self._cache: OrderedDict[str, Rows] = OrderedDict()

    def _resplits(self) -> bool:
        return self.task_shots is not None or self.val_size is not None

    def _split_sizes(self, n: int) -> tuple[int, int]:
        """(train, val) rows taken from ``n`` labelled rows (of one class for classification)."""
        train = self.task_shots if self.task_shots is not None else n - (self.val_size or 0)
        val = self.val_size if self.val_size is not None else n - train
        return train, val

    def _check_split_sizes(self) -> None:
        """Every task (of every meta-split) can give its fixed task the requested split sizes;
        checked on the scanned counts, so a too-large size fails before any row is read."""
        if not self._resplits() and self.test_size is None:
            return
        ts, vs = self.task_shots, self.val_size
        if ts is not None and vs is not None:
            want, need = f"task_shots + val_size = {ts + vs}", ts + vs
        elif ts is not None:
            want, need = f"task_shots={ts} plus at least 1 val row", ts + 1
        else:
            want, need = f"val_size={vs} plus at least 1 train row", (vs or 0) + 1
        classes = self.kind == "classification"
        per = " per class" if classes else ""
        for t in sorted(self.index.rows):
            labelled: dict[int | None, int]
            test: dict[int | None, int]
            if classes:
                by = self.index.class_rows.get(t, {s: {} for s in SPLITS})
                labelled = {
                    c: by["train"].get(c, 0) + by["val"].get(c, 0)
                    for c in sorted({*by["train"], *by["val"]})
                }
                test = dict(sorted(by["test"].items()))
            else:
                r = self.index.rows[t]
                labelled, test = {None: r["train"] + r["val"]}, {None: r["test"]}
            if self._resplits():
                for c, n in labelled.items():
                    if n < need:
                        of = "" if c is None else f" of class {c}"
                        raise ConfigError(
                            f"parquet: task {t!r} has {n} train+val rows{of}, fewer than {want}{per} (test rows never move into train/val; lower the sizes)"
                        )
            if self.test_size is not None:
                for c, n in test.items():
                    if n < self.test_size:
                        of = "" if c is None else f" of class {c}"
                        raise ConfigError(
                            f"parquet: task {t!r} has {n} test rows{of}, fewer than test_size={self.test_size}{per} (lower it)"
                        )

    def _check_ways(self, sampled: list[str], ways: int | None) -> int:
        """N of N-way: every class of a sampled task's train split must have ``shots`` train and
        ``queries`` val rows (at least one of each with ``replace``)."""
        fewest: tuple[int, str] | None = None
        for t in sampled:
            by = self.index.class_rows.get(t, {s: {} for s in SPLITS})
            cls = sorted(by["train"])
            for c in cls:
                for s, need, what in (
                    ("train", self.shots, "shots"),
                    ("val", self.queries, "queries"),
                ):
                    n = by[s].get(c, 0)
                    if n == 0:
                        raise DataError(
                            f"parquet: task {t!r} has no {s} rows of class {c} (every class of a task's train split needs train and val rows)"
                        )
                    if n < need and not self.replace:
                        raise ConfigError(
                            f"parquet: task {t!r} has {n} {s} rows of class {c}, fewer than {what}={need} per class (lower it or pass replace=True)"
                        )
            self._classes[t] = torch.tensor(cls, dtype=torch.int64)
            if fewest is None or len(cls) < fewest[0]:
                fewest = (len(cls), t)
        assert fewest is not None
        if fewest[0] < 2:
            raise DataError(
                f"parquet: task {fewest[1]!r} has {fewest[0]} class in its train split; episodes need at least 2 classes"
            )
        if ways is not None and ways > fewest[0]:
            raise ConfigError(
                f"parquet: ways={ways} but task {fewest[1]!r} has {fewest[0]} classes in its train split"
            )
        return ways or fewest[0]

    def options(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "shots": self.shots,
            "queries": self.queries,
            "replace": self.replace,
            "n_classes": self.n_classes,
            "full_check": self.full_check,
            "cache_tasks": self.cache_tasks,
            "ways": self.ways,
            "shape": None if self.shape is None else list(self.shape),
            "task_shots": self.task_shots,
            "val_size": self.val_size,
            "test_size": self.test_size,
        }

    def n_tasks(self, split: Split) -> int:
        return len(self._ids[check_split(split)])

    def task_ids(self, split: Split) -> list[str]:
        """The task ids of a meta-split, in index order (``task(split, i)`` is ``task_ids[i]``)."""
        return list(self._ids[check_split(split)])

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
                xt = torch.from_numpy(x[sp == s].copy())
                rows[s] = (
                    xt.view(len(xt), *self.input_shape),
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
            if self.kind == "classification":
                ep = self._episode(r, self._classes[ids[j]], generator)
                for k in range(4):
                    parts[k].append(ep[k])
                continue
            for (x, y), k, off in ((r["train"], self.shots, 0), (r["val"], self.queries, 2)):
                sel = self._draw(x.shape[0], k, generator)
                parts[off].append(x[sel])
                parts[off + 1].append(y[sel])
        if not pick:
            ns, nq = self._episode_sizes()
            y_shape: tuple[int, ...] = (1,) if self.kind == "regression" else ()
            y_dtype = torch.float32 if self.kind == "regression" else torch.int64
            return TaskBatch(
                torch.zeros(0, ns, *self.input_shape), torch.zeros(0, ns, *y_shape, dtype=y_dtype),
                torch.zeros(0, nq, *self.input_shape), torch.zeros(0, nq, *y_shape, dtype=y_dtype),
            )  # fmt: skip
        return TaskBatch(*(torch.stack(p) for p in parts))

    def _episode_sizes(self) -> tuple[int, int]:
        n = self.ways or 1
        return n * self.shots, n * self.queries

    def episode_examples(self) -> int:
        return sum(self._episode_sizes())

    def _episode(
        self, r: Rows, classes: torch.Tensor, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """An N-way episode: ``ways`` of the task's classes, each with exactly ``shots`` support
        and ``queries`` query rows, shuffled."""
        chosen = classes[torch.randperm(len(classes), generator=g)[: self.ways]]
        out: list[torch.Tensor] = []
        for (x, y), k in ((r["train"], self.shots), (r["val"], self.queries)):
            sel = []
            for c in chosen.tolist():
                rows = torch.nonzero(y == c).flatten()
                sel.append(rows[self._draw(len(rows), k, g)])
            idx = torch.cat(sel)
            idx = idx[torch.randperm(len(idx), generator=g)]
            out += [x[idx], y[idx]]
        return out[0], out[1], out[2], out[3]

    def task(self, split: Split, index: int) -> Task:
        ids = self._ids_of(split)
        if not 0 <= index < len(ids):
            raise ConfigError(
                f"parquet: task index {index} out of range (meta-split {split!r} has {len(ids)} tasks)"
            )
        r, notes = self.fixed_rows(ids[index])
        return Task(
            ids[index],
            *r["train"],
            *r["val"],
            *r["test"],
            kind=self.kind,
            output_dim=self.output_dim,
            notes=notes,
        )

    def fixed_rows(self, task_id: str) -> tuple[Rows, list[str]]:
        """A task's rows as its fixed task holds them: the stored splits, re-split and capped
        by ``task_shots`` / ``val_size`` / ``test_size`` (module docstring), plus notes saying so."""
        r = self.rows(task_id)
        if not self._resplits() and self.test_size is None:
            return r, []
        out, notes = dict(r), []
        if self._resplits():
            x = torch.cat([r["train"][0], r["val"][0]])
            y = torch.cat([r["train"][1], r["val"][1]])
            order = torch.from_numpy(resplit_order(task_id, len(x)))
            train, val = self._pick(y[order])
            out["train"] = (x[order[train]], y[order[train]])
            out["val"] = (x[order[val]], y[order[val]])
            notes.append(
                f"train/val re-split (seeded by the task id) from the stored {len(r['train'][0])} train + {len(r['val'][0])} val rows into {len(train)} + {len(val)}"
            )
        if self.test_size is not None:
            xe, ye = r["test"]
            keep = self._first(ye, self.test_size)
            out["test"] = (xe[keep], ye[keep])
            if len(keep) < len(xe):
                notes.append(f"test split capped to {len(keep)} of its {len(xe)} rows")
        return out, notes

    def _groups(self, y: torch.Tensor) -> list[torch.Tensor]:
        """Positions of ``y``'s rows, in order: one group (regression) or one per class."""
        if self.kind != "classification":
            return [torch.arange(len(y))]
        return [torch.nonzero(y == c).flatten() for c in torch.unique(y).tolist()]

    def _pick(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions (ascending) of the train and val rows among the permuted labelled rows."""
        train, val = [], []
        for pos in self._groups(y):
            n_tr, n_va = self._split_sizes(len(pos))
            train.append(pos[:n_tr])
            val.append(pos[n_tr : n_tr + n_va])
        return torch.cat(train).sort().values, torch.cat(val).sort().values

    def _first(self, y: torch.Tensor, k: int) -> torch.Tensor:
        """Positions (ascending) of the first ``k`` rows (of each class for classification)."""
        return torch.cat([pos[:k] for pos in self._groups(y)]).sort().values
