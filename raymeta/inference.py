"""The tuned model back out: ``load_model(TUNE_DIR)`` and ``predict(TUNE_DIR, INPUT, OUT)``.

A ``raymeta tune`` run directory holds ``best_model.pt`` (the best member's weights, a plain
``str -> Tensor`` dict) and ``report.json``, which records the model spec the weights belong
to (``model``), their sha256 (``model_sha256``), the winning candidate and the task kind.

``load_model`` checks the report, verifies the checksum before anything is unpickled, loads the
weights with ``torch.load(weights_only=True)``, refuses anything but a dict of named tensors
matching the model's parameters, and returns the model (built from the stored spec with
``build_model``) in eval mode. ``predict`` streams a Parquet file in the task schema (only
``features`` is needed; or plain numeric columns with ``feature_columns``) through the model and
writes, atomically, every input column except the features plus the predictions:

* regression: ``prediction`` (one output), or ``prediction_0`` ... ``prediction_{k-1}``;
* classification: ``prediction`` (the class id, int64, argmax of the logits) and ``logits``
  (``fixed_size_list<float>[C]``, one raw score per class of the model).

Flat features are reshaped to the model's input shape when the sizes agree (as ``raymeta tune``
does for Parquet tasks). Every bad input is a one-line ``RaymetaError``; nothing is written then.
No Ray here.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

from raymeta import checks
from raymeta.core.checkpoint import weights_load_error
from raymeta.core.models import ModelSpec, build_model, expected_shapes
from raymeta.errors import CheckpointError, ConfigError, DataError, RaymetaError
from raymeta.fileio import read_json_file
from raymeta.paths import check_apart, check_output_file, check_outside_artifacts
from raymeta.plugins import blame
from raymeta.tasks.parquet import FeatureReader, atomic_file, show_shape

__all__ = [
    "MODEL_FILE",
    "REPORT_FILE",
    "Predictions",
    "TunedRun",
    "load_model",
    "predict",
    "read_run",
]

REPORT_FILE = "report.json"  # the names ``raymeta tune`` writes (orchestration.tune.run)
MODEL_FILE = "best_model.pt"
MAX_REPORT_BYTES = 64 << 20
MAX_MODEL_BYTES = 16 << 30
PREDICT_BATCH_ROWS = 8192


@dataclass(frozen=True)
class TunedRun:
    """What a tune run's ``report.json`` says about its best model."""

    path: Path
    spec: ModelSpec
    kind: str
    sha256: str
    candidate: str | None
    report: dict[str, Any] = field(repr=False)

    @property
    def weights(self) -> Path:
        return self.path / MODEL_FILE


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def read_run(run: str | os.PathLike[str]) -> TunedRun:
    """Read and check ``run/report.json`` (no weights are read)."""
    p = Path(checks.path("run", run))
    if not p.is_dir():
        raise CheckpointError(f"tune run {p} does not exist or is not a directory")
    f = p / REPORT_FILE
    if not f.exists():
        raise CheckpointError(f"{p} is not a raymeta tune run (no {REPORT_FILE})")
    report = read_json_file(f, MAX_REPORT_BYTES, CheckpointError)
    if not isinstance(report, dict) or not isinstance(report.get("model"), dict):
        raise CheckpointError(f"{f} is not a raymeta tune report (no model spec)")
    try:
        spec = ModelSpec.from_dict(report["model"])
    except RaymetaError as exc:
        raise CheckpointError(f"{f}: bad model spec: {_first_line(exc)}") from None
    digest = report.get("model_sha256")
    if not isinstance(digest, str) or len(digest) != 64:
        raise CheckpointError(
            f"{f} records no sha256 of {MODEL_FILE} (written by an older raymeta: rerun raymeta tune)"
        )
    kind = report.get("kind")
    if kind is None:  # reports before "kind" was recorded: accuracy is reported for classifiers
        best = report.get("best")
        kind = (
            "classification" if isinstance(best, dict) and "test_accuracy" in best else "regression"
        )
    if kind not in ("regression", "classification"):
        raise CheckpointError(f"{f}: unknown task kind {kind!r}")
    cand = report.get("candidate")
    return TunedRun(p, spec, kind, digest, cand if isinstance(cand, str) else None, report)


def _read_weights(run: TunedRun) -> dict[str, torch.Tensor]:
    f = run.weights
    try:
        if not f.is_file():
            raise CheckpointError(f"{run.path} has no {MODEL_FILE}")
        if f.stat().st_size > MAX_MODEL_BYTES:
            raise CheckpointError(f"{f} is larger than {MAX_MODEL_BYTES >> 30} GiB")
        data = f.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read {f}: {exc.strerror or exc}") from None
    got = hashlib.sha256(data).hexdigest()
    if got != run.sha256:
        raise CheckpointError(
            f"{f}: checksum mismatch (sha256 {got[:12]}..., {REPORT_FILE} records {run.sha256[:12]}...): the file was changed or truncated"
        )
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, OSError) as exc:
        raise CheckpointError(
            f"{f} is not a weights-only tensor file: {weights_load_error(exc)}"
        ) from None
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise CheckpointError(f"{f} does not hold a dict of named tensors")
    return dict(obj)


def load_model(run: str | os.PathLike[str], device: str | torch.device = "cpu") -> nn.Module:
    """The best model of a ``raymeta tune`` run, ready to call (eval mode, on ``device``).

    Built from the spec in ``report.json`` (``raymeta.core.models.build_model``); the weights'
    sha256 is verified before they are loaded with ``torch.load(weights_only=True)``. Bad input
    of any kind (a missing or tampered file, a pickled object, names or shapes that do not fit
    the model) is a one-line ``CheckpointError``."""
    dev = _device(device)
    r = read_run(run)
    params = _read_weights(r)
    _check_shapes(r, params)
    model = build_model(r.spec)  # a factory that fails is a one-line ConfigError
    state = model.state_dict()
    required = {k for k, _ in model.named_parameters()}
    missing = sorted(required - set(params))
    extra = sorted(set(params) - set(state))
    if missing or extra:
        what = f"missing {missing[0]!r}" if missing else f"has an unexpected tensor {extra[0]!r}"
        raise CheckpointError(
            f"{r.weights} does not match model {r.spec.name!r}: {what} ({len(missing)} missing, {len(extra)} unexpected)"
        )
    for k, t in params.items():
        want = tuple(state[k].shape)
        if tuple(t.shape) != want or not t.is_floating_point():
            raise CheckpointError(
                f"{r.weights}: tensor {k!r} is {t.dtype} {tuple(t.shape)}, model {r.spec.name!r} needs floating point {want}"
            )
    dtypes = {t.dtype for t in params.values()}
    if len(dtypes) == 1:  # weights tuned in float64 stay float64
        model = model.to(dtypes.pop())
    model.load_state_dict(params, strict=False)
    return model.to(dev).eval()


def _check_shapes(r: TunedRun, params: dict[str, torch.Tensor]) -> None:
    """The weights hold every parameter of ``r.spec`` with its shape, checked on the meta
    device (nothing allocated) before the model is built: a report.json edited to
    ``widths: [50000, 50000]`` built and initialised a 10 GB model (or died in the allocator)
    before the same check on the built model refused it. Weights that pass are as large as
    the model, so building it costs no more than reading them did."""
    want = expected_shapes(r.spec)  # a factory that fails is a one-line ConfigError
    missing = sorted(set(want) - set(params))
    if missing:
        raise CheckpointError(
            f"{r.weights} does not match model {r.spec.name!r}: missing {missing[0]!r} ({len(missing)} missing)"
        )
    for k, shape in want.items():
        if tuple(params[k].shape) != shape:
            raise CheckpointError(
                f"{r.weights}: tensor {k!r} is {params[k].dtype} {tuple(params[k].shape)}, model {r.spec.name!r} needs floating point {shape}"
            )


def _device(device: Any) -> torch.device:
    """``device`` as a ``torch.device`` this machine has: a bogus name was torch's RuntimeError
    listing every device type it knows, and ``cuda`` on a CPU-only machine another one, each
    after the run had been read."""
    try:
        dev = torch.device(device) if isinstance(device, (str, torch.device)) else None
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device {device!r} (use cpu or cuda[:N])")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: no CUDA GPU is visible to this process")
    return dev


@dataclass(frozen=True)
class Predictions:
    """What ``predict`` wrote."""

    path: Path
    rows: int
    kind: str
    columns: list[str]


# what a tune run directory holds (orchestration.tune.run): never a place for predictions
RUN_ENTRIES = (REPORT_FILE, MODEL_FILE, "run.json", "history.jsonl", "results", "ray_results")


def _check_out(
    out: str | os.PathLike[str],
    source: str | os.PathLike[str],
    overwrite: bool,
    run: str | os.PathLike[str] | None = None,
) -> Path:
    p = Path(out)
    if not str(out) or "\0" in str(out):
        raise ConfigError(f"--out must be a file path, got {str(out)!r}")
    if run is not None:
        _check_not_in_run(p, Path(run))
    check_outside_artifacts(p, "--out")  # any meta-checkpoint, tune run or results dataset
    if p.exists() and not p.is_dir() and not overwrite:
        raise ConfigError(f"{p} exists (pass --overwrite to replace it)")
    p = check_output_file(p, "--out", force=True)
    check_apart(p, source)
    return p


def _check_not_in_run(out: Path, run: Path) -> None:
    """``--out RUN/best_model.pt --overwrite`` would replace the model it predicts with (and
    ``RUN/report.json`` the record of the run): refuse the run's own files, its results
    dataset, its experiment and its hidden state."""
    try:
        o, r = out.expanduser().resolve(), run.expanduser().resolve()
    except (OSError, RuntimeError, ValueError):
        return
    if r not in o.parents:
        return
    top = o.relative_to(r).parts[0]
    if top in RUN_ENTRIES or top.startswith("."):
        raise ConfigError(
            f"--out {out} would overwrite part of the tune run {run} ({top}); write the "
            "predictions elsewhere"
        )


def predict(
    run: str | os.PathLike[str],
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    feature_columns: list[str] | None = None,
    batch_rows: int = PREDICT_BATCH_ROWS,
    device: str | torch.device = "cpu",
) -> Predictions:
    """Batch inference of a tune run's best model on a Parquet file (see the module docstring
    for the columns written); ``out`` is written atomically and refused if it exists unless
    ``overwrite``."""
    if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
        raise ConfigError(f"batch_rows must be an integer >= 1, got {batch_rows!r}")
    for name, value in (("run", run), ("source", source), ("out", out)):
        checks.path(name, value)
    checks.boolean("overwrite", overwrite)
    _device(device)
    dest = _check_out(out, source, overwrite, run)
    r = read_run(run)
    model = load_model(run, device=device)
    reader = FeatureReader(source, feature_columns)
    shape, width = tuple(r.spec.input_shape), math.prod(r.spec.input_shape)
    if reader.width is not None and reader.width != width:
        declared = f" (shape {show_shape(reader.shape)})" if reader.shape else ""
        raise DataError(
            f"{source}: features have width {reader.width}{declared} but the model takes inputs {show_shape(shape)} ({width} values)"
        )
    dtype = next(model.parameters()).dtype
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    out_dim = int(r.spec.output_dim)
    if r.kind == "classification":
        new: list[pa.Field] = [
            pa.field("prediction", pa.int64()),
            pa.field("logits", pa.list_(pa.from_numpy_dtype(np_dtype), out_dim)),
        ]
    elif out_dim == 1:
        new = [pa.field("prediction", pa.from_numpy_dtype(np_dtype))]
    else:
        new = [pa.field(f"prediction_{k}", pa.from_numpy_dtype(np_dtype)) for k in range(out_dim)]
    base = reader.dataset.schema
    clash = [f.name for f in new if f.name in reader.passthrough]
    if clash:
        raise DataError(f"{source}: already has a column {clash[0]!r}, which predict writes")
    schema = pa.schema([base.field(n) for n in reader.passthrough] + new)
    n_rows = 0
    with atomic_file(dest) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for keep, x in reader.batches(batch_rows):
            if x.shape[1] != width:
                raise DataError(
                    f"{source}: features have width {x.shape[1]} but the model takes inputs {show_shape(shape)} ({width} values)"
                )
            x = x if x.flags.writeable else x.copy()
            xt = torch.from_numpy(x).to(device=device, dtype=dtype).reshape(len(x), *shape)
            with torch.no_grad(), blame([r.spec.name], "in predict"):
                y = model(xt)
            if not isinstance(y, torch.Tensor) or tuple(y.shape) != (len(x), out_dim):
                got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
                raise CheckpointError(
                    f"model {r.spec.name!r} returned {got}, expected ({len(x)}, {out_dim})"
                )
            yn = y.detach().cpu().numpy().astype(np_dtype, copy=False)
            if r.kind == "classification":
                cols: list[pa.Array] = [
                    pa.array(yn.argmax(axis=1).astype(np.int64)),
                    pa.FixedSizeListArray.from_arrays(pa.array(yn.reshape(-1)), out_dim),
                ]
            else:
                cols = [pa.array(yn[:, k]) for k in range(out_dim)]
            arrays = [keep.column(n).combine_chunks() for n in reader.passthrough] + cols
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
            n_rows += len(x)
        if n_rows == 0:
            raise DataError(f"{source}: holds no rows")
    return Predictions(dest, n_rows, r.kind, [f.name for f in schema])
