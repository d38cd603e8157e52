"""The Parquet task-table schema: column checks, conversion, one-task files and writing.

A task table has one row per example (see ``SCHEMA_DOC``). Everything a user can get wrong in
such a file is caught here and raised as a one-line ``DataError`` naming the file, the column
and, where there is one, the task.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from raymeta.errors import DataError
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
"""
REQUIRED = ("task_id", "split", "features", "target")
STRING_COLUMNS = ("task_id", "split", "meta_split")
# Bounds that keep a model built from the data checkable: a label of 2**40 would mean 2**40
# output units, a feature width of 10**9 a first layer of 10**9 x hidden weights.
MAX_CLASSES = 10_000
MAX_FEATURE_WIDTH = 1 << 20
CARVE_FRACTION = 0.2  # share of train rows moved to val when a one-task file has no val split


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


def _is_str(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t))


def check_schema(schema: pa.Schema, where: str, need_task_id: bool = True) -> Columns:
    need = REQUIRED if need_task_id else REQUIRED[1:]
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
    tt = schema.field("target").type
    if pa.types.is_floating(tt):
        kind: Kind = "regression"
    elif pa.types.is_integer(tt):
        kind = "classification"
    else:
        raise DataError(
            f"{where}: column 'target' must be float (regression) or int64 (classification), got {tt}"
        )
    return Columns(width, kind, "task_id" in schema.names, "meta_split" in schema.names)


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
    arr = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(
        len(lengths), width or 0
    )
    finite = np.asarray(np.isfinite(arr).all(axis=1))
    if not finite.all():
        raise DataError(
            f"{where}: column 'features' holds non-finite values{_first(~finite, names)}"
        )
    return arr


def target_numpy(
    col: pa.Array | pa.ChunkedArray,
    kind: Kind,
    where: str,
    names: Sequence[str] | pa.Array | None = None,
) -> np.ndarray:
    """float32 (regression) or int64 (classification) targets; DataError on nulls, NaN, negatives."""
    if col.null_count:
        raise DataError(f"{where}: column 'target' has null values")
    arr = col.to_numpy(zero_copy_only=False) if isinstance(col, pa.Array) else col.to_numpy()
    if kind == "regression":
        out = np.asarray(arr, dtype=np.float32)
        bad = ~np.isfinite(out)
        if bad.any():
            raise DataError(f"{where}: column 'target' holds non-finite values{_first(bad, names)}")
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
    y = target_numpy(table["target"], cols.kind, str(p))
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
    cols: dict[str, list[np.ndarray]] = {
        c: [] for c in ("task_id", "split", "features", "target", "meta_split")
    }
    for task, ms in zip(tasks, splits, strict=True):
        if task.kind != kind or int(np.prod(task.input_shape)) != width:
            raise DataError(
                f"write_tasks: task {task.task_id!r} differs in kind or feature width from the first task"
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
    table = pa.Table.from_arrays(arrays, schema=task_schema(width, kind, meta_split=with_ms))
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp, row_group_size=max(1024, min(65536, (1 << 20) // width)))
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
