"""The Parquet task-table schema: column checks, conversion, one-task files and writing.

A task table has one row per example (see ``SCHEMA_DOC``). Everything a user can get wrong in
such a file is caught here and raised as a one-line ``DataError`` naming the file, the column
and, where there is one, the task.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from raymeta.checks import show_value
from raymeta.errors import ConfigError, DataError, RaymetaError
from raymeta.fileio import clean_stale, fsync_dir, make_temp_file
from raymeta.paths import check_apart
from raymeta.tasks.base import SPLITS, Kind, Task

SCHEMA_DOC = """\
column      type                                   meaning
task_id     string                                 which task the row belongs to
split       string: train | val | test             the row's split *within* its task
features    fixed_size_list<float32>[D]            the input (float64 / variable lists of equal
                                                   length are accepted and cast to float32)
target      float32 | float64  -> regression       the label; integer targets are class ids
            int64 (any integer) -> classification   0..C-1 with C <= MAX_CLASSES (10000)
meta_split  string: train | val | test (optional)  the task's meta-split; when absent a stable hash
                                                   of task_id assigns 80% train / 10% val / 10% test

Feature shape: the schema metadata key ``raymeta.feature_shape`` (a JSON list, e.g. ``[1, 8, 8]``
for 1x8x8 images; its product must equal D) makes the flat features come back shaped, so a CNN
(``conv4``) takes them. ``write_tasks`` and ``raymeta data convert --shape`` write it; the
``parquet`` family's ``shape=`` option declares (or overrides) it without rewriting the data.
"""
REQUIRED = ("task_id", "split", "features", "target")
STRING_COLUMNS = ("task_id", "split", "meta_split")
# Bounds that keep a model built from the data checkable: a label of 2**40 would mean 2**40
# output units, a feature width of 10**9 a first layer of 10**9 x hidden weights.
MAX_CLASSES = 10_000
MAX_FEATURE_WIDTH = 1 << 20
CARVE_FRACTION = 0.2  # share of train rows moved to val when a one-task file has no val split
SHAPE_KEY = b"raymeta.feature_shape"  # schema metadata: the features' shape, a JSON list
MAX_SHAPE_DIMS = 8


def parse_shape(value: Any, where: str, error: type[RaymetaError] = DataError) -> tuple[int, ...]:
    """A feature shape from a list of sizes, ``"1,8,8"``, ``"1x8x8"`` or ``"[1, 8, 8]"``."""
    v = value
    if isinstance(v, bytes):
        try:
            v = v.decode()
        except UnicodeDecodeError:
            v = None
    if isinstance(v, int) and not isinstance(v, bool):
        v = [v]
    if isinstance(v, str):
        text = v.strip().strip("[]()")
        parts = [t.strip() for t in text.replace("x", ",").replace("X", ",").split(",")]
        v = (
            [int(t) if t.isascii() and t.isdigit() and len(t) <= 18 else t for t in parts]
            if text
            else []
        )
    if (
        not isinstance(v, (list, tuple))
        or not 1 <= len(v) <= MAX_SHAPE_DIMS
        or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in v)
    ):
        raise error(
            f"{where}: feature shape must be 1 to {MAX_SHAPE_DIMS} positive sizes such as 1x8x8, got {show_value(value)}"
        )
    return tuple(int(d) for d in v)


def check_shape(
    shape: tuple[int, ...], width: int, where: str, error: type[RaymetaError] = DataError
) -> tuple[int, ...]:
    """``shape`` when its product is the feature width ``width``; else a one-line error."""
    if math.prod(shape) != width:
        raise error(
            f"{where}: feature shape {show_shape(shape)} holds {math.prod(shape)} values but the features have width {width}"
        )
    return shape


def show_shape(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape)


def schema_shape(schema: pa.Schema, where: str) -> tuple[int, ...] | None:
    """The feature shape declared in a file's schema metadata, or None."""
    raw = (schema.metadata or {}).get(SHAPE_KEY)
    return (
        None if raw is None else parse_shape(raw, f"{where}: schema metadata {SHAPE_KEY.decode()}")
    )


def shape_metadata(shape: Sequence[int] | None) -> dict[bytes, bytes]:
    return {} if shape is None else {SHAPE_KEY: json.dumps([int(d) for d in shape]).encode()}


def feature_type(width: int) -> pa.DataType:
    return pa.list_(pa.float32(), width)


def task_schema(width: int, kind: Kind, meta_split: bool = False) -> pa.Schema:
    """The canonical schema ``write_tasks`` produces."""
    target = pa.int64() if kind == "classification" else pa.float32()
    fields = [
        ("task_id", pa.string()),
        ("split", pa.string()),
        ("features", feature_type(width)),
        ("target", target),
    ]
    if meta_split:
        fields.append(("meta_split", pa.string()))
    return pa.schema(fields)


def meta_split_of(task_id: str) -> str:
    """Stable 80/10/10 assignment of a task id to a meta-split (same on every machine, forever)."""
    bucket = int.from_bytes(hashlib.sha256(task_id.encode()).digest()[:8], "big") % 10
    return "train" if bucket < 8 else ("val" if bucket == 8 else "test")


@dataclass(frozen=True)
class Columns:
    """What a file's schema says: feature width (None for variable lists), task kind, extras."""

    width: int | None
    kind: Kind
    has_task_id: bool
    has_meta_split: bool
    shape: tuple[int, ...] | None = None  # declared in the schema metadata (``SHAPE_KEY``)


def _is_str(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t))


def check_schema(schema: pa.Schema, where: str, need_task_id: bool = True) -> Columns:
    need = REQUIRED if need_task_id else REQUIRED[1:]
    twice = sorted({c for c in schema.names if schema.names.count(c) > 1})
    if twice:  # Arrow cannot select such a column by name ("does not exist in schema")
        raise DataError(f"{where}: column {twice[0]!r} appears more than once")
    missing = [c for c in need if c not in schema.names]
    if missing:
        raise DataError(f"{where}: missing column(s) {', '.join(missing)} (need {', '.join(need)})")
    for col in ("task_id", "split", "meta_split"):
        if col in schema.names and not _is_str(schema.field(col).type):
            raise DataError(f"{where}: column {col!r} must be string, got {schema.field(col).type}")
    ft = schema.field("features").type
    is_list = pa.types.is_fixed_size_list(ft) or pa.types.is_list(ft) or pa.types.is_large_list(ft)
    if not is_list or not pa.types.is_floating(ft.value_type):
        raise DataError(f"{where}: column 'features' must be fixed_size_list<float32>[D], got {ft}")
    width = ft.list_size if pa.types.is_fixed_size_list(ft) else None
    if width is not None:
        check_width(width, where)
    shape = schema_shape(schema, where)
    if shape is not None and width is not None:
        check_shape(shape, width, where)
    tt = schema.field("target").type
    if pa.types.is_floating(tt):
        kind: Kind = "regression"
    elif pa.types.is_integer(tt):
        kind = "classification"
    else:
        raise DataError(
            f"{where}: column 'target' must be float (regression) or int64 (classification), got {tt}"
        )
    return Columns(width, kind, "task_id" in schema.names, "meta_split" in schema.names, shape)


def check_width(width: int, where: str) -> None:
    if width < 1:
        raise DataError(f"{where}: column 'features' has width {width} (need at least 1 value)")
    if width > MAX_FEATURE_WIDTH:
        raise DataError(
            f"{where}: column 'features' has width {width}, more than the supported {MAX_FEATURE_WIDTH}"
        )


def check_utf8(col: pa.Array | pa.ChunkedArray, name: str, where: str) -> None:
    """A string column whose bytes are not UTF-8 (Arrow does not check on read) is refused here,
    before ``to_pylist`` would die in a ``UnicodeDecodeError``."""
    chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    for chunk in chunks:
        try:
            chunk.validate(full=True)
        except (pa.ArrowInvalid, pa.ArrowException):
            raise DataError(f"{where}: column {name!r} holds bytes that are not UTF-8") from None


def check_string_columns(table: pa.Table | pa.RecordBatch, where: str) -> None:
    for name in STRING_COLUMNS:
        if name in table.schema.names:
            check_utf8(table.column(name), name, where)


def _first(mask: np.ndarray, names: Sequence[str] | pa.Array | None) -> str:
    """`` (task 'x')`` for the first row flagged in ``mask``, to name the culprit in an error."""
    if names is None or not mask.any():
        return ""
    name = names[int(np.argmax(mask))]
    return f" (task {name.as_py() if isinstance(name, pa.Scalar) else name!r})"


def check_splits(
    split: pa.Array | pa.ChunkedArray, where: str, names: Sequence[str] | pa.Array | None = None
) -> None:
    if split.null_count:
        raise DataError(f"{where}: column 'split' has null values")
    bad = pc.invert(pc.is_in(split, value_set=pa.array(SPLITS)))
    if pc.any(bad).as_py():
        value = pc.filter(split, bad)[0].as_py()
        raise DataError(
            f"{where}: column 'split' has unknown value {value!r}{_first(bad.to_numpy(zero_copy_only=False), names)} (use train, val or test)"
        )


def _float32(values: Any) -> np.ndarray:
    """``values`` as float32 without numpy's "overflow encountered in cast" RuntimeWarning, which
    printed two lines before the one error line: a finite float64 beyond float32's range becomes
    inf here, and the caller's finiteness check refuses it (``_bad_values`` names it)."""
    with np.errstate(over="ignore"):
        return np.asarray(values).astype(np.float32, copy=False)


def _bad_values(source: Any, cast: np.ndarray) -> str:
    """What to call the values that failed the finiteness check after ``_float32``: a float64
    past float32's range is finite in the file, so "non-finite" would send the user looking for
    a NaN that is not there."""
    src = np.asarray(source)
    if (
        src.dtype.kind == "f"
        and src.dtype.itemsize > 4
        and (np.isinf(cast.reshape(src.shape)) & np.isfinite(src)).any()
    ):
        return "values beyond float32's range (|x| > 3.4e38)"
    return "non-finite values"


def features_numpy(
    col: pa.Array | pa.ChunkedArray,
    width: int | None,
    where: str,
    names: Sequence[str] | pa.Array | None = None,
) -> np.ndarray:
    """``[N, D]`` float32 features; DataError on nulls, ragged rows or non-finite values."""
    if col.null_count:
        raise DataError(f"{where}: column 'features' has null rows")
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    if len(lengths) and width is None:
        width = int(lengths[0])
        check_width(width, where)
    if len(lengths) and (lengths != width).any():
        bad = lengths != width
        got = int(lengths[int(np.argmax(bad))])
        raise DataError(
            f"{where}: column 'features' has rows of width {got}, expected {width}{_first(bad, names)}"
        )
    values = pc.list_flatten(col)
    if values.null_count:
        raise DataError(f"{where}: column 'features' holds null values")
    raw = values.to_numpy(zero_copy_only=False)
    arr = _float32(raw).reshape(len(lengths), width or 0)
    finite = np.asarray(np.isfinite(arr).all(axis=1))
    if not finite.all():
        raise DataError(
            f"{where}: column 'features' holds {_bad_values(raw, arr)}{_first(~finite, names)}"
        )
    return arr


def target_numpy(
    col: pa.Array | pa.ChunkedArray,
    kind: Kind,
    where: str,
    names: Sequence[str] | pa.Array | None = None,
    column: str = "target",
) -> np.ndarray:
    """float32 (regression) or int64 (classification) targets; DataError on nulls, NaN, negatives.
    ``column`` is the name the messages use: ``convert_table`` reads the user's own column."""
    if col.null_count:
        raise DataError(f"{where}: column {column!r} has null values")
    arr = col.to_numpy(zero_copy_only=False) if isinstance(col, pa.Array) else col.to_numpy()
    if kind == "regression":
        out = _float32(arr)
        bad = ~np.isfinite(out)
        if bad.any():
            raise DataError(
                f"{where}: column {column!r} holds {_bad_values(arr, out)}{_first(bad, names)}"
            )
        return out
    if arr.dtype == np.uint64 and len(arr) and int(arr.max()) >= MAX_CLASSES:
        raise DataError(
            f"{where}: classification targets must be class ids 0..{MAX_CLASSES - 1}{_first(arr >= MAX_CLASSES, names)}"
        )
    out = np.asarray(arr, dtype=np.int64)
    bad = (out < 0) | (out >= MAX_CLASSES)
    if bad.any():
        raise DataError(
            f"{where}: classification targets must be class ids 0..{MAX_CLASSES - 1}, got {int(out[int(np.argmax(bad))])}{_first(bad, names)}"
        )
    return out


def _to_tensors(x: np.ndarray, y: np.ndarray, kind: Kind) -> tuple[torch.Tensor, torch.Tensor]:
    yt = torch.from_numpy(y.copy())
    return torch.from_numpy(x.copy()), (yt.view(-1, 1) if kind == "regression" else yt)


def load_task_file(path: str | os.PathLike[str]) -> Task:
    """Read a Parquet file holding ONE task (``task_id`` optional). A missing val split is carved
    from train (``CARVE_FRACTION``, seeded by the task id) and recorded in ``Task.notes``."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"task file {p} does not exist")
    try:
        table = pq.read_table(p)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(
            f"{p}: not a readable Parquet file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        ) from None
    cols = check_schema(table.schema, str(p), need_task_id=False)
    check_string_columns(table, str(p))
    if table.num_rows == 0:
        raise DataError(f"{p}: holds no rows")
    task_id = p.stem
    if cols.has_task_id:
        if table["task_id"].null_count:
            raise DataError(f"{p}: column 'task_id' has null values")
        ids = pc.unique(table["task_id"]).to_pylist()
        if len(ids) > 1:
            raise DataError(
                f"{p}: holds {len(ids)} tasks; a task file must hold one (use a task set for many)"
            )
        task_id = str(ids[0]) if ids and ids[0] is not None else task_id
    check_splits(table["split"], str(p))
    x = features_numpy(table["features"], cols.width, str(p))
    if cols.shape is not None:
        x = x.reshape(len(x), *check_shape(cols.shape, x.shape[1], str(p)))
    y = target_numpy(table["target"], cols.kind, str(p))
    if cols.kind == "classification" and len(np.unique(y)) < 2:
        # nothing to learn: the tuned model predicts the one class, its loss 0 from the start
        raise DataError(
            f"{p}: task {task_id!r} has one class ({int(y[0])}) only; classification needs at least 2"
        )
    split = np.asarray(table["split"].to_pylist())
    parts = {s: (x[split == s], y[split == s]) for s in SPLITS}
    for s in ("train", "test"):
        if len(parts[s][0]) == 0:
            raise DataError(f"{p}: task {task_id!r} has no {s!r} rows")
    notes: list[str] = []
    if len(parts["val"][0]) == 0:
        xt, yt = parts["train"]
        n_val = max(1, round(CARVE_FRACTION * len(xt)))
        if len(xt) - n_val < 1:
            raise DataError(
                f"{p}: task {task_id!r} has no 'val' rows and too few 'train' rows ({len(xt)}) to carve them from"
            )
        seed = int.from_bytes(hashlib.sha256(task_id.encode()).digest()[:8], "big") & (2**63 - 1)
        perm = np.random.default_rng(seed).permutation(len(xt))
        parts["val"], parts["train"] = (
            (xt[perm[:n_val]], yt[perm[:n_val]]),
            (xt[perm[n_val:]], yt[perm[n_val:]]),
        )
        notes.append(
            f"no val split in {p.name}: carved {n_val} of {len(xt)} train rows into val (seeded by the task id)"
        )
    t = {s: _to_tensors(*parts[s], cols.kind) for s in SPLITS}
    out_dim = int(y.max()) + 1 if cols.kind == "classification" else 1
    return Task(
        task_id, *t["train"], *t["val"], *t["test"], kind=cols.kind, output_dim=out_dim, notes=notes
    )


def _column(tensor: torch.Tensor, kind: Kind, task_id: str) -> np.ndarray:
    y = tensor.detach().cpu().numpy()
    if kind == "regression":
        if y.ndim > 1 and y.shape[1:] != (1,):
            raise DataError(
                f"write_tasks: task {task_id!r} has a multi-output target {tuple(y.shape)}; the schema holds one"
            )
        return y.reshape(-1).astype(np.float32)
    return y.reshape(-1).astype(np.int64)


def write_tasks(
    path: str | os.PathLike[str],
    tasks: Sequence[Task],
    meta_split: str | Sequence[str] | None = None,
) -> None:
    """Write ``tasks`` in the schema to one Parquet file, atomically (temp file + rename)."""
    if not tasks:
        raise DataError("write_tasks: no tasks to write")
    splits = (
        [meta_split] * len(tasks)
        if meta_split is None or isinstance(meta_split, str)
        else list(meta_split)
    )
    if (
        len(splits) != len(tasks)
        or any(s not in SPLITS for s in splits)
        and any(s is not None for s in splits)
    ):
        raise DataError(
            "write_tasks: meta_split must be train/val/test, one per task or one for all"
        )
    kind, width = tasks[0].kind, int(np.prod(tasks[0].input_shape))
    shape = tuple(tasks[0].input_shape)
    cols: dict[str, list[np.ndarray]] = {
        c: [] for c in ("task_id", "split", "features", "target", "meta_split")
    }
    for task, ms in zip(tasks, splits, strict=True):
        if task.kind != kind or tuple(task.input_shape) != shape:
            raise DataError(
                f"write_tasks: task {task.task_id!r} differs in kind or feature shape from the first task"
            )
        for s, (x, y) in zip(
            SPLITS,
            ((task.x_train, task.y_train), (task.x_val, task.y_val), (task.x_test, task.y_test)),
            strict=True,
        ):
            n = int(x.shape[0])
            cols["task_id"].append(np.full(n, task.task_id, dtype=object))
            cols["split"].append(np.full(n, s, dtype=object))
            cols["features"].append(x.detach().cpu().reshape(n, width).numpy().astype(np.float32))
            cols["target"].append(_column(y, kind, task.task_id))
            cols["meta_split"].append(np.full(n, ms, dtype=object))
    feats = np.concatenate(cols["features"])
    arrays = [
        pa.array(np.concatenate(cols["task_id"]), pa.string()),
        pa.array(np.concatenate(cols["split"]), pa.string()),
        pa.FixedSizeListArray.from_arrays(pa.array(feats.reshape(-1), pa.float32()), width),
        pa.array(np.concatenate(cols["target"])),
    ]
    with_ms = splits[0] is not None
    if with_ms:
        arrays.append(pa.array(np.concatenate(cols["meta_split"]), pa.string()))
    schema = task_schema(width, kind, meta_split=with_ms)
    if len(shape) > 1:  # images and other shaped inputs: record the shape (``SHAPE_KEY``)
        schema = schema.with_metadata(shape_metadata(shape))
    table = pa.Table.from_arrays(arrays, schema=schema)
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp, row_group_size=row_group_rows(width))


def row_group_rows(width: int) -> int:
    """Rows per row group: about 2**20 feature values (4 MiB), at least 1024 rows."""
    return max(1024, min(65536, (1 << 20) // max(width, 1)))


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[str]:
    """A temp file beside ``path`` (hidden, so a dataset scan skips it) that replaces ``path``
    only if the block finishes; removed on any error or interrupt, and so are the parent
    directories this call created (bad data found while writing leaves no empty ``OUT/``)."""
    dest = Path(path)
    made = [d for d in (dest.parent, *dest.parent.parents) if not d.exists()]
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        clean_stale(dest.parent, dest.name)
        fd, tmp = make_temp_file(dest.parent, dest.name)
        os.close(fd)
    except BaseException:
        _remove_empty(made)
        raise
    try:
        yield tmp
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        _remove_empty(made)
        raise


def _remove_empty(dirs: list[Path]) -> None:
    """Remove ``dirs`` (deepest first) while they are empty: what a failed write created."""
    for d in dirs:
        try:
            d.rmdir()
        except OSError:  # not empty (someone else wrote there meanwhile) or already gone
            return


# ---------------------------------------------------------------- tables with named columns

COLUMNS_KEY = b"raymeta.feature_columns"  # schema metadata: the source columns, in order
CLASSES_KEY = b"raymeta.classes"  # schema metadata: class id -> label, for string labels
CONVERT_BATCH_ROWS = 65536


def _numeric(t: pa.DataType) -> bool:
    return bool(pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t))


def _open_dataset(path: str | os.PathLike[str], what: str) -> Any:
    import pyarrow.dataset as ds

    p = Path(path)
    if not p.exists():
        raise DataError(f"{what} {p} does not exist")
    try:
        dataset = ds.dataset(str(p), format="parquet")
        if not dataset.files:
            raise DataError(f"{p}: no Parquet files found")
        _ = dataset.schema
    except (pa.ArrowException, OSError) as exc:
        twice = _repeated_column(p)
        if twice is not None:  # was "not a readable Parquet file (Can't unify schema ...)"
            name, f = twice
            where = "" if f == p else f" file {f}"
            raise DataError(f"{p}:{where} has two columns named {name!r}") from None
        raise DataError(
            f"{p}: not a readable Parquet file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        ) from None
    return dataset


def _repeated_column(p: Path) -> tuple[str, Path] | None:
    """A column name that a Parquet file ``p`` (or a file of the directory ``p``) holds twice,
    and that file; else None."""
    files = [p] if p.is_file() else sorted(p.rglob("*.parquet"))[:10_000] if p.is_dir() else []
    for f in files:
        try:
            names = pq.read_schema(f).names if f.is_file() else []
        except (pa.ArrowException, OSError):
            continue
        twice = next((n for n in names if names.count(n) > 1), None)
        if twice is not None:
            return twice, f
    return None


def _check_files(dataset: Any, columns: dict[str, str], where: str) -> None:
    """Every file of a directory input has every named column (``columns``: name -> its role,
    for the message). pyarrow takes a directory's
    schema from one file and reads a column that another file lacks as nulls, so without this
    a file missing a feature column was reported as the column "has null values"."""
    if len(dataset.files) < 2:
        return
    try:
        for frag in dataset.get_fragments():
            names = frag.physical_schema.names
            for c, role in columns.items():
                if c not in names:
                    raise DataError(
                        f"{where}: file {frag.path} has no {role} column {c!r} "
                        f"(the file has {', '.join(names[:50])})"
                    )
                if names.count(c) > 1:  # which of the two was read depended on pyarrow
                    raise DataError(f"{where}: file {frag.path} has two columns named {c!r}")
    except (pa.ArrowException, OSError) as exc:
        raise DataError(
            f"{where}: not a readable Parquet file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        ) from None


def _check_columns(
    schema: pa.Schema, columns: Sequence[str], where: str, what: str = "feature"
) -> None:
    """Every named column exists and is numeric (integer, float or bool)."""
    for c in columns:
        if c not in schema.names:
            raise DataError(
                f"{where}: no column {c!r} (the table has {', '.join(schema.names[:50])})"
            )
        t = schema.field(c).type
        if not _numeric(t):
            raise DataError(
                f"{where}: {what} column {c!r} is {t}, not numeric (use integer, float or bool columns)"
            )


def columns_numpy(
    batch: pa.Table | pa.RecordBatch, columns: Sequence[str], where: str
) -> np.ndarray:
    """``[N, len(columns)]`` float32 from named numeric columns; one-line ``DataError`` naming
    the column on nulls or non-finite values."""
    out = np.empty((batch.num_rows, len(columns)), np.float32)
    for j, c in enumerate(columns):
        col = batch.column(c)
        if col.null_count:
            raise DataError(f"{where}: feature column {c!r} has null values")
        raw = col.to_numpy(zero_copy_only=False)
        v = _float32(raw)
        if not np.isfinite(v).all():
            raise DataError(f"{where}: feature column {c!r} holds {_bad_values(raw, v)}")
        out[:, j] = v
    return out


_KEY_SEP = "\x1f"  # task id + separator + label: the groups a classification split stratifies


def _split_keys(ids: pa.Array, y: pa.Array | None) -> pa.Array:
    """The group each row is split within: its task, or (classification) its task and class."""
    if y is None:
        return ids
    return pc.binary_join_element_wise(ids, pc.cast(y, pa.string()), _KEY_SEP)


def _split_plan(
    counts: dict[str, int], val_fraction: float, test_fraction: float
) -> dict[str, np.ndarray]:
    """Per group (task, or task and class), the within-task split of each of its rows in file
    order (0 train, 1 val, 2 test): a permutation seeded by the group, so a rerun assigns the
    same rows, and every class of a task has train, val and test rows."""
    plan: dict[str, np.ndarray] = {}
    for t, n in counts.items():
        n_val, n_test = max(1, round(val_fraction * n)), max(1, round(test_fraction * n))
        if n - n_val - n_test < 1:
            task, _, label = t.partition(_KEY_SEP)
            of = f" of class {label!r}" if label else ""
            raise DataError(
                f"task {task!r} has {n} row{'s' if n != 1 else ''}{of}, too few to split into train/val/test (give a split column or add rows)"
            )
        seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "big") & (2**63 - 1)
        perm = np.random.default_rng(seed).permutation(n)
        a = np.zeros(n, np.uint8)
        a[perm[:n_val]] = 1
        a[perm[n_val : n_val + n_test]] = 2
        plan[t] = a
    return plan


@dataclass(frozen=True)
class Converted:
    """What ``convert_table`` wrote."""

    path: str
    rows: int
    tasks: int
    width: int
    shape: tuple[int, ...] | None
    kind: Kind
    classes: list[str] | None = None  # class id -> label, when the labels were strings


def convert_table(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    feature_columns: Sequence[str],
    target_column: str,
    task_column: str | None = None,
    split_column: str | None = None,
    meta_split_column: str | None = None,
    shape: Sequence[int] | str | None = None,
    kind: str = "auto",
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
) -> Converted:
    """Convert a table with named numeric feature columns and a target column into the task
    schema, streaming (two passes over the key columns, one over the features), written
    atomically to ``out``.

    ``task_column`` names the task of each row (absent: the whole table is one task, named after
    the file). ``split_column`` holds train/val/test; absent, each task's rows are split
    ``1 - val_fraction - test_fraction`` / ``val_fraction`` / ``test_fraction`` by a permutation
    seeded by the task id. ``kind`` auto: integer / bool targets are class ids, floats are
    regression; string labels need ``kind="classification"`` and become ids in sorted order
    (recorded in the schema metadata). ``shape`` declares the feature shape (e.g. ``[1, 8, 8]``)."""
    where = str(source)
    check_apart(out, source, "convert: out", "input")
    feats = [str(c) for c in feature_columns]
    if not feats or any(not c for c in feats):
        raise DataError("convert: name at least one feature column")
    if len(set(feats)) != len(feats):
        dup = next(c for c in feats if feats.count(c) > 1)
        raise DataError(f"convert: feature column {dup!r} is named twice")
    if kind not in ("auto", "regression", "classification"):
        raise DataError(f"convert: kind must be auto, regression or classification, got {kind!r}")
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < 1:
            raise DataError(f"convert: {name} must be a number in (0, 1), got {f!r}")
    if val_fraction + test_fraction >= 1:
        raise DataError("convert: val_fraction + test_fraction must be below 1 (train needs rows)")
    keys = {"target": target_column, "task": task_column, "split": split_column}
    keys["meta_split"] = meta_split_column
    named = [c for c in keys.values() if c is not None]
    for c in named:
        if c in feats:
            raise DataError(
                f"convert: column {c!r} is both a feature and the {next(k for k, v in keys.items() if v == c)} column"
            )
    if len(set(named)) != len(named):
        raise DataError("convert: the target, task, split and meta-split columns must differ")
    dataset = _open_dataset(source, "input table")
    schema = dataset.schema
    _check_columns(schema, feats, where)
    for role, col in keys.items():
        if col is not None and col not in schema.names:
            raise DataError(
                f"{where}: no {role} column {col!r} (the table has {', '.join(schema.names[:50])})"
            )
    roles = {c: r.replace("_", "-") for r, c in keys.items() if c is not None}
    _check_files(dataset, {**dict.fromkeys(feats, "feature"), **roles}, where)
    width = len(feats)
    check_width(width, where)
    decl = None if shape is None else check_shape(parse_shape(shape, "convert"), width, "convert")
    tt = schema.field(target_column).type
    if pa.types.is_floating(tt):
        if kind == "classification":
            raise DataError(
                f"{where}: target column {target_column!r} is {tt}; classification needs integer or string labels"
            )
        out_kind: Kind = "regression"
    elif pa.types.is_integer(tt) or pa.types.is_boolean(tt):
        out_kind = "regression" if kind == "regression" else "classification"
    elif _is_str(tt) or pa.types.is_dictionary(tt):
        if kind != "classification":
            raise DataError(
                f"{where}: target column {target_column!r} is {tt}, not numeric (string labels need kind classification)"
            )
        out_kind = "classification"
    else:
        raise DataError(f"{where}: target column {target_column!r} is {tt}, not numeric")
    for role in ("task", "split", "meta_split"):
        col = keys[role]
        if col is not None:
            t = schema.field(col).type
            if role != "task" and not _is_str(t):
                raise DataError(
                    f"{where}: {role} column {col!r} must be string (train, val or test), got {t}"
                )
            if role == "task" and not (_is_str(t) or pa.types.is_integer(t)):
                raise DataError(f"{where}: task column {col!r} must be string or integer, got {t}")
    default_task = Path(source).stem

    def task_ids(b: pa.RecordBatch) -> pa.Array:
        if task_column is None:
            return pa.array([default_task] * b.num_rows, pa.string())
        col = b.column(task_column)
        if col.null_count:
            raise DataError(f"{where}: task column {task_column!r} has null values")
        return col if _is_str(col.type) else pc.cast(col, pa.string())

    # pass 1: key columns only -- rows per task (and per split), meta-splits, string labels
    first = [c for c in (task_column, split_column, meta_split_column, target_column) if c]
    counts: dict[str, int] = {}  # rows per split group (task, or task and class)
    tasks: set[str] = set()
    have: dict[str, set[str]] = {}
    metas: dict[str, str] = {}
    labels: set[str] = set()
    try:
        for b in dataset.to_batches(columns=first, batch_size=CONVERT_BATCH_ROWS):
            ids = task_ids(b)
            check_utf8(ids, task_column or "task", where)
            y = b.column(target_column)
            if y.null_count:
                raise DataError(f"{where}: target column {target_column!r} has null values")
            keys_ = _split_keys(ids, y if out_kind == "classification" else None)
            grp = pa.table({"t": keys_}).group_by("t").aggregate([([], "count_all")])
            for t, c in zip(
                grp.column("t").to_pylist(), grp.column("count_all").to_pylist(), strict=True
            ):
                counts[t] = counts.get(t, 0) + c
            tasks.update(pc.unique(ids).to_pylist())
            if split_column is not None:
                sp = b.column(split_column)
                check_utf8(sp, split_column, where)
                if sp.null_count:
                    raise DataError(f"{where}: split column {split_column!r} has null values")
                bad = pc.invert(pc.is_in(sp, value_set=pa.array(SPLITS)))
                if pc.any(bad).as_py():
                    raise DataError(
                        f"{where}: split column {split_column!r} has unknown value {pc.filter(sp, bad)[0].as_py()!r} (use train, val or test)"
                    )
                pairs = pa.table({"t": ids, "s": sp}).group_by(["t", "s"]).aggregate([])
                for t, s in zip(
                    pairs.column("t").to_pylist(), pairs.column("s").to_pylist(), strict=True
                ):
                    have.setdefault(t, set()).add(s)
            if meta_split_column is not None:
                ms = b.column(meta_split_column)
                check_utf8(ms, meta_split_column, where)
                if ms.null_count:
                    raise DataError(
                        f"{where}: meta-split column {meta_split_column!r} has null values"
                    )
                pairs = pa.table({"t": ids, "m": ms}).group_by(["t", "m"]).aggregate([])
                for t, m in zip(
                    pairs.column("t").to_pylist(), pairs.column("m").to_pylist(), strict=True
                ):
                    if m not in SPLITS:
                        raise DataError(
                            f"{where}: meta-split column {meta_split_column!r} has unknown value {m!r} (task {t!r}; use train, val or test)"
                        )
                    if metas.setdefault(t, m) != m:
                        raise DataError(
                            f"{where}: task {t!r} has rows in meta-splits {metas[t]!r} and {m!r}"
                        )
            if out_kind == "classification" and not _numeric(y.type):
                labels.update(str(v) for v in pc.unique(pc.cast(y, pa.string())).to_pylist())
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{where}: cannot read ({str(exc).splitlines()[0]})") from None
    if not counts:
        raise DataError(f"{where}: holds no rows")
    for t in sorted(tasks):
        missing = [s for s in SPLITS if split_column is not None and s not in have.get(t, set())]
        if missing:
            raise DataError(
                f"{where}: task {t!r} has no {'/'.join(missing)} rows in column {split_column!r} (every task needs train, val and test)"
            )
    if out_kind == "classification":
        # a one-class task is refused by every reader of the file (its loss is 0 from the start)
        per_task: dict[str, set[str]] = {}
        for key in counts:
            t, _, label = key.partition(_KEY_SEP)
            per_task.setdefault(t, set()).add(label)
        for t, seen in sorted(per_task.items()):
            if len(seen) < 2:
                raise DataError(
                    f"{where}: task {t!r} has one class ({next(iter(seen))!r}) only in target column {target_column!r}; classification needs at least 2 (or pass --kind regression)"
                )
    classes = sorted(labels) if labels else None
    if classes is not None and len(classes) > MAX_CLASSES:
        raise DataError(f"{where}: {len(classes)} distinct labels, more than {MAX_CLASSES} classes")
    plan = None if split_column is not None else _split_plan(counts, val_fraction, test_fraction)
    cursor = dict.fromkeys(counts, 0)
    meta: dict[bytes, bytes] = {**shape_metadata(decl), COLUMNS_KEY: json.dumps(feats).encode()}
    if classes is not None:
        meta[CLASSES_KEY] = json.dumps(classes).encode()
    out_schema = task_schema(width, out_kind, meta_split=meta_split_column is not None)
    out_schema = out_schema.with_metadata(meta)
    split_names = np.asarray(SPLITS, dtype=object)
    n_rows = 0
    cols = [
        *feats,
        *(c for c in (task_column, split_column, meta_split_column) if c),
        target_column,
    ]
    with atomic_file(out) as tmp, pq.ParquetWriter(tmp, out_schema) as writer:
        try:
            batches = dataset.to_batches(columns=cols, batch_size=CONVERT_BATCH_ROWS)
            for b in batches:
                if not b.num_rows:
                    continue
                ids = task_ids(b)
                x = columns_numpy(b, feats, where)
                y = b.column(target_column)
                if split_column is not None:
                    sp = b.column(split_column)
                else:
                    by = _split_keys(ids, y if out_kind == "classification" else None)
                    tid = np.asarray(by.to_pylist(), dtype=object)
                    code = np.zeros(len(tid), np.uint8)
                    uniq, inv = np.unique(tid, return_inverse=True)
                    for k, t in enumerate(uniq.tolist()):
                        rows = np.flatnonzero(inv == k)
                        at = cursor[t]
                        code[rows] = plan[t][at : at + len(rows)]  # type: ignore[index]
                        cursor[t] = at + len(rows)
                    sp = pa.array(split_names[code], pa.string())
                if classes is not None:
                    ids_y = pc.index_in(pc.cast(y, pa.string()), value_set=pa.array(classes))
                    y_np: np.ndarray = ids_y.to_numpy(zero_copy_only=False).astype(np.int64)
                else:
                    y_np = target_numpy(
                        pc.cast(y, pa.int64()) if pa.types.is_boolean(y.type) else y,
                        out_kind,
                        where,
                        ids,
                        target_column,
                    )
                arrays = [
                    ids,
                    sp,
                    pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), pa.float32()), width),
                    pa.array(y_np.astype(np.int64 if out_kind == "classification" else np.float32)),
                ]
                if meta_split_column is not None:
                    arrays.append(b.column(meta_split_column))
                writer.write_table(
                    pa.Table.from_arrays(arrays, schema=out_schema), row_group_rows(width)
                )
                n_rows += b.num_rows
        except (pa.ArrowException, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno is not None:
                raise
            raise DataError(f"{where}: cannot read ({str(exc).splitlines()[0]})") from None
    return Converted(str(out), n_rows, len(tasks), width, decl, out_kind, classes)


# ---------------------------------------------------------------- features for inference


def _check_feature_columns(columns: Any) -> None:
    """A list of distinct column names: a plain string would be read as its characters (``"ab"``
    predicted from columns ``a`` and ``b``), and a name given twice was an internal KeyError from
    Arrow ('Field "a" exists 2 times in schema')."""
    if (
        isinstance(columns, (str, bytes))
        or not isinstance(columns, Sequence)
        or not columns
        or not all(isinstance(c, str) and c for c in columns)
    ):
        raise ConfigError(
            f"feature columns must be a non-empty list of column names, got {show_value(columns)}"
        )
    dup = next((c for c in columns if columns.count(c) > 1), None)
    if dup is not None:
        raise ConfigError(f"feature column {dup!r} is named twice")


class FeatureReader:
    """Streams features, shaped ``[N, *shape]`` float32, from a Parquet file (or directory) in
    the task schema (only ``features`` is needed; ``task_id``/``split``/``target`` are kept as
    they are), or from named numeric ``feature_columns`` of a plain table. Every other column
    travels with its rows (``passthrough``)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        feature_columns: Sequence[str] | None = None,
    ) -> None:
        self.path = str(path)
        if feature_columns is not None:
            _check_feature_columns(feature_columns)
        self.dataset = _open_dataset(path, "input")
        schema: pa.Schema = self.dataset.schema
        self.feature_columns = list(feature_columns) if feature_columns is not None else None
        self.shape: tuple[int, ...] | None = None
        if self.feature_columns is not None:
            _check_columns(schema, self.feature_columns, self.path)
            self.width: int | None = len(self.feature_columns)
            drop = set(self.feature_columns)
        else:
            if "features" not in schema.names:
                raise DataError(
                    f"{self.path}: missing column features (the task schema's fixed_size_list<float32>[D]; or name numeric columns with --feature-columns)"
                )
            ft = schema.field("features").type
            is_list = (
                pa.types.is_fixed_size_list(ft)
                or pa.types.is_list(ft)
                or pa.types.is_large_list(ft)
            )
            if not is_list or not pa.types.is_floating(ft.value_type):
                raise DataError(
                    f"{self.path}: column 'features' must be fixed_size_list<float32>[D], got {ft}"
                )
            self.width = ft.list_size if pa.types.is_fixed_size_list(ft) else None
            if self.width is not None:
                check_width(self.width, self.path)
            self.shape = schema_shape(schema, self.path)
            if self.shape is not None and self.width is not None:
                check_shape(self.shape, self.width, self.path)
            drop = {"features"}
        needed = self.feature_columns or ["features"]
        _check_files(self.dataset, dict.fromkeys(needed, "feature"), self.path)
        self.passthrough = [n for n in schema.names if n not in drop]
        for c in STRING_COLUMNS:
            if c in schema.names and not _is_str(schema.field(c).type):
                raise DataError(
                    f"{self.path}: column {c!r} must be string, got {schema.field(c).type}"
                )

    def batches(self, rows: int = CONVERT_BATCH_ROWS) -> Iterator[tuple[pa.Table, np.ndarray]]:
        """(passthrough columns, ``[N, D]`` float32 features) a bounded batch at a time."""
        cols = self.passthrough + (self.feature_columns or ["features"])
        try:
            for b in self.dataset.to_batches(columns=cols, batch_size=rows):
                if self.feature_columns is not None:
                    x = columns_numpy(b, self.feature_columns, self.path)
                else:
                    names = b.column("task_id") if "task_id" in b.schema.names else None
                    x = features_numpy(b.column("features"), self.width, self.path, names)
                    self.width = int(x.shape[1]) if len(x) else self.width
                check_string_columns(b, self.path)
                yield pa.Table.from_batches([b.select(self.passthrough)]), x
        except (pa.ArrowException, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno is not None:
                raise
            raise DataError(f"{self.path}: cannot read ({str(exc).splitlines()[0]})") from None
