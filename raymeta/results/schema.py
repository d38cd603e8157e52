"""The one long/tidy results schema every sweep row uses, and the row constructor.

One row is one measurement. Row conventions (the tune and sweep code write them, the report
reads them):

* ``metric="val_loss"`` (and ``"val_accuracy"`` for classification): one row per reporting
  interval of a trial; ``step`` is the cumulative member-steps that trial has *spent itself*
  (not inherited from a PBT exploit source), ``wall_s`` the seconds since its run
  (strategy, task, seed) started.
* ``metric="test_loss"`` (and ``"test_accuracy"``): one final row per (strategy, task, seed)
  at the final step, for the model the run selected.
* ``trial`` names the trial/member inside a run; ``hparams`` is the member's hyperparameters
  as a JSON object; ``versions`` records the library versions that produced the row.

Why a long table: strategies report different metrics at different budgets, and a long table
appends without schema changes and aggregates with one group-by.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import math
import platform
from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from raymeta import __version__
from raymeta.errors import ConfigError

SCHEMA_VERSION = 1
VERSION_KEY = b"raymeta.results.schema_version"

SCHEMA = pa.schema(
    [
        pa.field("sweep", pa.string(), nullable=False),
        pa.field("strategy", pa.string(), nullable=False),
        pa.field("task", pa.string(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("trial", pa.string(), nullable=False),
        pa.field("step", pa.int64(), nullable=False),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("value", pa.float64(), nullable=False),
        pa.field("hparams", pa.string(), nullable=False),
        pa.field("wall_s", pa.float64(), nullable=False),
        pa.field("versions", pa.string(), nullable=False),
    ],
    metadata={VERSION_KEY: str(SCHEMA_VERSION).encode()},
)
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


def _json_default(obj: Any) -> Any:
    item = getattr(obj, "item", None)  # numpy / torch scalars
    if callable(item):
        return item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"hparams value {obj!r} is not JSON-serialisable")


def hparams_json(hparams: Mapping[str, Any] | str | None) -> str:
    """Canonical JSON (sorted keys) so equal hyperparameters compare equal as strings."""
    if hparams is None:
        return "{}"
    obj: Any = hparams
    if isinstance(hparams, str):
        try:
            obj = json.loads(hparams)
        except json.JSONDecodeError:
            raise ConfigError(f"hparams string is not valid JSON: {hparams[:60]!r}") from None
    if not isinstance(obj, Mapping):
        raise ConfigError(f"hparams must be a mapping, got {type(obj).__name__}")
    try:
        return json.dumps(dict(obj), sort_keys=True, default=_json_default)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None


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
        "hparams": hparams_json(hparams),
        "wall_s": w,
        "versions": versions_json(),
    }


def rows_to_table(rows: Any) -> pa.Table:
    """Rows (mappings with exactly the schema's columns) -> a table carrying the version tag."""
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
    try:
        return pa.table(cols, schema=SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"result rows have values of the wrong type: {msg}") from None
