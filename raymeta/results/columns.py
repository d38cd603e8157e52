"""Arrow arrays of the results schema's column types from Python values, without pandas.

Why not ``pa.array`` / ``pa.table``: their first call in a process looks for pandas and imports
it (0.5-0.6 s of CPU on the 2-core CPU), which a sweep's driver paid in the middle of its run,
on the cores its workers train on. The schema's columns are strings, 64-bit integers and
floats, and one struct of nullable ones: Arrow's own string builder and numpy buffers build
them directly, as fast, and as strictly (a value of the wrong type is a ``TypeError`` naming
it, never converted: a float is not truncated into an integer column, a bool is not a number).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

_EXACT = 2**53  # integers a float64 holds exactly


def _wrong(value: Any, kind: str) -> TypeError:
    return TypeError(f"{value!r} ({type(value).__name__}) is not {kind}")


def _validity(values: Sequence[Any], nullable: bool) -> pa.Buffer | None:
    """The validity bitmap of ``values`` (None where all are set); None values are nulls
    only where ``nullable``."""
    missing = [v is None for v in values]
    if not any(missing):
        return None
    if not nullable:
        raise TypeError("None in a column that cannot be null")
    valid = ~np.asarray(missing, dtype=bool)
    return pa.py_buffer(np.packbits(valid, bitorder="little"))


def _check(
    values: Sequence[Any], exact: tuple[type, ...], want: type, kind: str, nullable: bool
) -> None:
    """Every value is of ``want`` (not a bool), or None where ``nullable``. The common case, all
    of the ``exact`` types, is one pass at C speed; only other types are checked one by one."""
    allowed = {*exact, type(None)} if nullable else set(exact)
    if set(map(type, values)) <= allowed:
        return
    for v in values:
        if (not isinstance(v, want) or isinstance(v, bool)) and not (nullable and v is None):
            raise _wrong(v, kind)


def strings(values: Sequence[Any], nullable: bool = False) -> pa.Array:
    """A ``string`` array; only ``str`` values (and None where ``nullable``)."""
    _check(values, (str,), str, "a string", nullable)
    builder = getattr(pa.lib, "StringBuilder", None)  # pyarrow's own, not in its top level
    if builder is None:  # a pyarrow without it: pa.array, which may import pandas once
        return pa.array(list(values), type=pa.string())
    b = builder()
    b.append_values(values)
    out = b.finish()
    return out if out.type == pa.string() else out.cast(pa.string())


def _numeric(values: Sequence[Any], kind: pa.DataType, nullable: bool) -> pa.Array:
    """An ``int64`` or ``float64`` array from numbers (integral ones only for ``int64``)."""
    if pa.types.is_integer(kind):
        _check(values, (int,), numbers.Integral, "an integer", nullable)
        dtype: type = np.int64
    else:
        _check(values, (float, int), numbers.Real, "a number", nullable)
        if any(type(v) is int and abs(v) > _EXACT for v in values):  # as pa.array refuses
            raise TypeError("an integer beyond 2**53 is not exactly a 64-bit float")
        dtype = np.float64
    validity = _validity(values, nullable) if nullable else None
    data = values if validity is None else [0 if v is None else v for v in values]
    try:
        arr: np.ndarray = np.fromiter(data, dtype=dtype, count=len(values))
    except OverflowError:
        raise TypeError(f"a value out of the {kind} range") from None
    return pa.Array.from_buffers(kind, len(values), [validity, pa.py_buffer(arr)])


def _struct(values: Sequence[Mapping[str, Any]], kind: pa.StructType) -> pa.Array:
    """A struct array from mappings (an absent key is a null field)."""
    n = len(values)
    set_at = [i for i, v in enumerate(values) if v]  # a results table's are mostly empty
    children = []
    for f in (kind.field(i) for i in range(kind.num_fields)):
        field: list[Any] = [None] * n
        for i in set_at:
            field[i] = values[i].get(f.name)
        children.append(column(field, f.type, f.nullable))
    if not children:
        return pa.array([{}] * len(values), type=kind)
    return pa.StructArray.from_arrays(children, fields=list(kind))


def column(values: Sequence[Any], kind: pa.DataType, nullable: bool = False) -> pa.Array:
    """``values`` as an Arrow array of ``kind``: string, int64, float64 or a struct of them
    (of mappings). ``TypeError`` for a value of another type, or None where not ``nullable``."""
    if pa.types.is_struct(kind):
        fields = {kind.field(i).name for i in range(kind.num_fields)}
        for v in values:
            if not isinstance(v, Mapping):
                raise _wrong(v, "a mapping")
            unknown = [k for k in v if k not in fields]
            if unknown:  # never dropped silently
                raise TypeError(f"unknown field(s) {', '.join(map(repr, unknown))} of {kind}")
        return _struct(values, kind)
    if pa.types.is_string(kind):
        return strings(values, nullable)
    if kind in (pa.int64(), pa.float64()):
        return _numeric(values, kind, nullable)
    raise TypeError(f"no builder for Arrow type {kind}")


def table_of(columns: Mapping[str, Sequence[Any]], schema: pa.Schema) -> pa.Table:
    """A table of ``schema`` from one list per field (``column`` each); ``TypeError`` names the
    column of a value of the wrong type."""
    arrays = []
    for f in schema:
        try:
            arrays.append(column(columns[f.name], f.type, f.nullable))
        except TypeError as exc:
            raise TypeError(f"column {f.name!r}: {exc}") from None
    return pa.Table.from_arrays(arrays, schema=schema)
