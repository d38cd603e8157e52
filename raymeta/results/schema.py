"""The one long/tidy results schema every row uses, and the row constructor.

One row is one measurement. Row conventions (the tune and sweep code write them, the report
reads them):

* ``metric="val_loss"`` (and ``"val_accuracy"`` for classification): one row per reporting
  interval of a trial; ``step`` is the cumulative member-steps that trial has *spent itself*
  (not inherited from a PBT exploit source), ``wall_s`` the seconds since its run
  (strategy, task, seed) started.
* ``metric="test_loss"`` (and ``"test_accuracy"``): one final row per (strategy, task, seed)
  at the final step, for the model the run selected.
* ``trial`` names the trial/member inside a run; ``hparams`` is the member's hyperparameters
  as a struct with one typed, nullable field per fine-tuning hyperparameter (``HPARAM_TYPES``,
  the vocabulary of ``raymeta.finetune.hparams.HPARAMS``; a test keeps the two equal). It is
  declared here, not read from there, because the results layer never imports torch.

Why a long table: strategies report different metrics at different budgets, and a long table
appends without schema changes and aggregates with one group-by.

Schema version 2 (this one) on disk: part files hold ``PART_SCHEMA`` (every column but
``sweep``, which is the Hive directory key ``sweep=NAME``), so ``pandas.read_parquet(root)``,
``pyarrow.parquet.read_table(root)`` and ``ray.data.read_parquet(root)`` read a dataset in one
line. The library versions that wrote a part are in its footer (``VERSIONS_KEY``) and, once per
distinct record, in the dataset marker ``_schema.json``. Version 1 (a ``sweep`` column in every
part, ``hparams`` and ``versions`` as JSON strings per row) is still read, converted on read.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import math
import numbers
import platform
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa

from raymeta import __version__
from raymeta.errors import ConfigError
from raymeta.results.columns import table_of

SCHEMA_VERSION = 2
VERSION_KEY = b"raymeta.results.schema_version"
VERSIONS_KEY = b"raymeta.results.versions"  # part footer: versions_json() of its writer

# The fine-tuning vocabulary, typed (must equal raymeta.finetune.hparams.HPARAMS, see the test).
HPARAM_TYPES: dict[str, pa.DataType] = {
    "lr": pa.float64(),
    "optimizer": pa.string(),
    "weight_decay": pa.float64(),
    "steps": pa.int64(),
    "batch_size": pa.int64(),
    "adapt": pa.string(),
    "model": pa.string(),
}
HPARAMS_TYPE = pa.struct([pa.field(k, t, nullable=True) for k, t in HPARAM_TYPES.items()])

_META = {VERSION_KEY: str(SCHEMA_VERSION).encode()}
SWEEP_FIELD = pa.field("sweep", pa.string(), nullable=False)
PART_SCHEMA = pa.schema(
    [
        pa.field("strategy", pa.string(), nullable=False),
        pa.field("task", pa.string(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("trial", pa.string(), nullable=False),
        pa.field("step", pa.int64(), nullable=False),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("value", pa.float64(), nullable=False),
        pa.field("hparams", HPARAMS_TYPE, nullable=False),
        pa.field("wall_s", pa.float64(), nullable=False),
    ],
    metadata=_META,
)
# What rows hold and ``read_results`` returns: the part columns plus ``sweep`` (plain string).
SCHEMA = pa.schema([SWEEP_FIELD, *PART_SCHEMA], metadata=_META)
COLUMNS: tuple[str, ...] = tuple(SCHEMA.names)


@functools.cache
def versions_json() -> str:
    """Versions of the stack, read from package metadata so torch/ray are never imported here."""
    out = {"raymeta": __version__, "python": platform.python_version()}
    for dist in ("torch", "ray", "numpy", "pyarrow"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return json.dumps(out, sort_keys=True)


def _hparam_value(name: str, value: Any) -> Any:
    item = getattr(value, "item", None)  # numpy / torch scalars
    if callable(item) and not isinstance(value, (str, bytes)):
        value = item()
    if value is None:
        return None
    kind = HPARAM_TYPES[name]
    if pa.types.is_string(kind):
        if isinstance(value, str):
            return value
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        if pa.types.is_floating(kind):
            return float(value)
        if isinstance(value, numbers.Integral):
            return int(value)
        if float(value).is_integer():
            return int(float(value))
    raise ConfigError(f"hparams {name}={value!r} is not a {kind} value")


def hparams_dict(hparams: Mapping[str, Any] | str | None) -> dict[str, Any]:
    """The typed hyperparameters of a row (the vocabulary's order; unset keys left out).

    Accepts a mapping, its JSON text (schema-1 rows) or None; a key outside the vocabulary is
    a one-line ``ConfigError`` naming it, so a new hyperparameter cannot be dropped silently."""
    if hparams is None or (type(hparams) is dict and not hparams):  # most rows: fast
        return {}
    obj: Any = hparams
    if isinstance(hparams, str):
        try:
            obj = json.loads(hparams)
        except json.JSONDecodeError:
            raise ConfigError(f"hparams string is not valid JSON: {hparams[:60]!r}") from None
    if not isinstance(obj, Mapping):
        raise ConfigError(f"hparams must be a mapping, got {type(obj).__name__}")
    unknown = sorted(str(k) for k in obj if k not in HPARAM_TYPES)
    if unknown:
        raise ConfigError(
            f"hparams: unknown hyperparameter(s) {', '.join(map(repr, unknown))} "
            f"(the results schema has {', '.join(HPARAM_TYPES)})"
        )
    out = {k: _hparam_value(k, obj[k]) for k in HPARAM_TYPES if k in obj}
    return {k: v for k, v in out.items() if v is not None}


def make_row(
    *,
    sweep: str,
    strategy: str,
    task: str | int,
    seed: int,
    trial: str | int,
    step: int,
    metric: str,
    value: float,
    hparams: Mapping[str, Any] | str | None,
    wall_s: float,
) -> dict[str, Any]:
    """Build one schema-conformant row; NaN/inf values are kept (a diverged member is data)."""
    if not metric:
        raise ConfigError("result row needs a non-empty metric name")
    w = float(wall_s)
    if not math.isfinite(w) or w < 0:
        raise ConfigError(f"result row wall_s must be finite and >= 0, got {wall_s!r}")
    return {
        "sweep": str(sweep),
        "strategy": str(strategy),
        "task": str(task),
        "seed": int(seed),
        "trial": str(trial),
        "step": int(step),
        "metric": str(metric),
        "value": float(value),
        "hparams": hparams_dict(hparams),
        "wall_s": w,
    }


def rows_to_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Rows (mappings with exactly the schema's columns) -> a ``SCHEMA`` table (with ``sweep``)."""
    cols: dict[str, list[Any]] = {c: [] for c in COLUMNS}
    for i, row in enumerate(rows):
        keys = set(row)
        if keys != set(COLUMNS):
            missing = sorted(set(COLUMNS) - keys)
            extra = sorted(keys - set(COLUMNS))
            raise ConfigError(
                f"result row {i} does not match the schema (missing {missing}, unknown {extra}); build rows with make_row"
            )
        for c in COLUMNS:
            cols[c].append(row[c])
    for c, values in cols.items():
        if any(v is None for v in values):
            raise ConfigError(f"result rows have a missing (None) value in column {c!r}")
    cols["hparams"] = [hparams_dict(h) for h in cols["hparams"]]
    try:  # built without pandas (``columns``: pa.table imports it, 0.5 s of CPU)
        return table_of(cols, SCHEMA)
    except TypeError as exc:
        raise ConfigError(f"result rows have values of the wrong type: {exc}") from None
