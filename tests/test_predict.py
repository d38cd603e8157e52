"""The tuned model back out: ``raymeta predict`` and ``raymeta.load_model``.

One real ``raymeta tune`` (on the shared Ray) on a Parquet task named by its id, then
``predict`` on that task's test split reproduces the run's own test loss; the rest are fast
checks on hand-made run directories: every bad input is one line, exit 2, nothing written.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from _tune_run import write_tune_run  # tests/ is on sys.path

import raymeta
from raymeta.cli.main import main
from raymeta.core.models import ModelSpec
from raymeta.errors import CheckpointError, DataError
from raymeta.inference import load_model, predict
from raymeta.tasks.parquet import SHAPE_KEY, ParquetFamily


def _features_table(x: np.ndarray, **extra: Any) -> pa.Table:
    n, d = x.shape
    cols = {"features": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), pa.float32()), d)}
    cols.update({k: pa.array(v) for k, v in extra.items()})
    return pa.table(cols)


@pytest.mark.ray
def test_tune_then_predict_reproduces_the_test_loss(
    ray_session: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from raymeta.core.checkpoint import save_meta_checkpoint
    from raymeta.core.train import MetaTrainConfig, meta_train

    data = tmp_path / "tasks.parquet"
    assert main(["data", "make-sinusoid", str(data), "--tasks", "20", "--train-size", "12"]) == 0
    opts = {"path": str(data), "shots": 5, "queries": 5}
    fam = ParquetFamily(**opts)  # type: ignore[arg-type]
    tid = fam.task_ids("test")[1]  # named by id, not by index
    tr = meta_train(
        MetaTrainConfig(family="parquet", family_options=opts, steps=3, meta_batch=4, val_tasks=2)
    )
    meta = save_meta_checkpoint(tmp_path / "meta", tr.to_checkpoint())
    out = tmp_path / "tune"
    argv = ["tune", "--meta", str(meta), "--task", f"parquet:{tid}", "--trials", "2"]
    argv += ["--strategy", "meta+broad+pbt", "--budget", "40", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["task"] == tid and rep["kind"] == "regression" and rep["candidate"]
    assert rep["model_sha256"] == hashlib.sha256((out / "best_model.pt").read_bytes()).hexdigest()

    task = fam.task("test", 1)
    x, y = task.x_test.reshape(len(task.x_test), -1).numpy(), task.y_test.view(-1).numpy()
    src = tmp_path / "x.parquet"
    pq.write_table(_features_table(x, task_id=[tid] * len(x), target=y), src)
    pred = tmp_path / "pred.parquet"
    capsys.readouterr()
    assert main(["predict", "--run", str(out), "--input", str(src), "--out", str(pred)]) == 0
    assert "wrote" in capsys.readouterr().out
    t = pq.read_table(pred)
    assert t.column_names == ["task_id", "target", "prediction"]
    p = t["prediction"].to_numpy().astype(np.float64)
    mse = float(np.mean((p - t["target"].to_numpy().astype(np.float64)) ** 2))
    assert mse == pytest.approx(rep["best"]["test_loss"], rel=1e-6, abs=1e-6)
    model = raymeta.load_model(out)
    assert not model.training
    with torch.no_grad():
        again = model(torch.from_numpy(x)).view(-1).numpy()
    np.testing.assert_allclose(again, p, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- hand-made run directories


def _run_dir(
    root: Path,
    spec: ModelSpec,
    kind: str = "regression",
    weights: Any = None,
    **report: Any,
) -> Path:
    """A tune run directory as ``raymeta tune`` writes it (report.json + best_model.pt)."""
    return write_tune_run(root, spec, kind, weights, **report)


MLP = ModelSpec("mlp", (3,), 1, {"widths": [8]})


def test_load_model_and_predict_regression(tmp_path: Path) -> None:
    run = _run_dir(tmp_path / "run", MLP)
    model = load_model(run)
    assert isinstance(model, torch.nn.Module) and not model.training
    x = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    src = tmp_path / "x.parquet"
    pq.write_table(_features_table(x, split=["test"] * 50), src)
    res = predict(run, src, tmp_path / "p.parquet", batch_rows=7)  # several batches
    assert res.rows == 50 and res.kind == "regression"
    t = pq.read_table(tmp_path / "p.parquet")
    assert t.column_names == ["split", "prediction"]
    with torch.no_grad():
        want = model(torch.from_numpy(x)).view(-1).numpy()
    np.testing.assert_allclose(t["prediction"].to_numpy(), want, rtol=0, atol=1e-6)
    # plain numeric columns instead of the features list
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"id": np.arange(50), "a": x[:, 0], "b": x[:, 1], "c": x[:, 2]}), plain)
    out = tmp_path / "p2.parquet"
    argv = ["predict", "--run", str(run), "--input", str(plain), "--out", str(out)]
    assert main([*argv, "--feature-columns", "a,b,c"]) == 0
    t2 = pq.read_table(out)
    assert t2.column_names == ["id", "prediction"]
    np.testing.assert_allclose(t2["prediction"].to_numpy(), want, rtol=0, atol=1e-6)


def test_predict_classification_on_shaped_images(tmp_path: Path) -> None:
    spec = ModelSpec("conv4", (1, 8, 8), 5, {"hidden": 16})
    run = _run_dir(tmp_path / "run", spec, kind="classification")
    x = np.random.default_rng(1).normal(size=(9, 64)).astype(np.float32)
    src = tmp_path / "x.parquet"
    table = _features_table(x)
    pq.write_table(table.replace_schema_metadata({SHAPE_KEY: b"[1, 8, 8]"}), src)
    out = tmp_path / "p.parquet"
    assert main(["predict", "--run", str(run), "--input", str(src), "--out", str(out)]) == 0
    t = pq.read_table(out)
    assert t.column_names == ["prediction", "logits"]
    logits = np.asarray(t["logits"].to_pylist(), np.float32)
    assert logits.shape == (9, 5)
    np.testing.assert_array_equal(t["prediction"].to_numpy(), logits.argmax(1))
    with torch.no_grad():
        want = load_model(run)(torch.from_numpy(x).view(9, 1, 8, 8)).numpy()
    np.testing.assert_allclose(logits, want, rtol=0, atol=1e-5)


def _one_line_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str], match: str) -> None:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("raymeta: error: ") and err.count("\n") == 1, err
    assert match in err, err


def _tamper(run: Path) -> None:
    f = run / "best_model.pt"
    data = bytearray(f.read_bytes())
    data[-10] ^= 0xFF
    f.write_bytes(bytes(data))


class _Evil:
    def __reduce__(self) -> Any:
        return (print, ("unpickled!",))


def _pickled_object(run: Path) -> None:
    """A pickled object in the weights, with report.json's checksum updated to match."""
    buf = io.BytesIO()
    torch.save({"body.1.weight": _Evil()}, buf)  # a real torch.save file holding an object
    data = buf.getvalue()
    assert b"print" in data
    (run / "best_model.pt").write_bytes(data)
    rep = json.loads((run / "report.json").read_text())
    rep["model_sha256"] = hashlib.sha256(data).hexdigest()
    (run / "report.json").write_text(json.dumps(rep))


def _rewrite_weights(run: Path, weights: Any) -> None:
    buf = io.BytesIO()
    torch.save(weights, buf)
    (run / "best_model.pt").write_bytes(buf.getvalue())
    rep = json.loads((run / "report.json").read_text())
    rep["model_sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()
    (run / "report.json").write_text(json.dumps(rep))


def _no_sha(run: Path) -> None:
    rep = json.loads((run / "report.json").read_text())
    del rep["model_sha256"]
    (run / "report.json").write_text(json.dumps(rep))


BAD_RUNS = {
    "tampered best_model.pt": (_tamper, "checksum mismatch"),
    "pickled object in the weights": (_pickled_object, "not a weights-only tensor file"),
    "not a dict of tensors": (
        lambda r: _rewrite_weights(r, {"body.1.weight": [1, 2, 3]}),
        "does not hold a dict of named tensors",
    ),
    "wrong tensor names": (
        lambda r: _rewrite_weights(r, {"nope": torch.zeros(2)}),
        "does not match model 'mlp'",
    ),
    "wrong tensor shape": (
        lambda r: _rewrite_weights(
            r,
            {
                k: torch.zeros(2, 2) if k == "head.weight" else v
                for k, v in load_model(r).state_dict().items()
            },
        ),
        "tensor 'head.weight' is torch.float32 (2, 2)",
    ),
    "no checksum in report.json": (_no_sha, "records no sha256"),
    "report.json not JSON": (
        lambda r: (r / "report.json").write_text("{"),
        "truncated or not JSON",
    ),
    "missing best_model.pt": (lambda r: (r / "best_model.pt").unlink(), "has no best_model.pt"),
}


@pytest.mark.parametrize("case", sorted(BAD_RUNS))
def test_bad_runs_are_one_line_and_write_nothing(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _run_dir(tmp_path / "run", MLP)
    make, match = BAD_RUNS[case]
    make(run)
    src = tmp_path / "x.parquet"
    pq.write_table(_features_table(np.zeros((4, 3), np.float32)), src)
    out = tmp_path / "out" / "p.parquet"
    argv = ["predict", "--run", str(run), "--input", str(src), "--out", str(out)]
    _one_line_exit_2(argv, capsys, match)
    assert "unpickled!" not in capsys.readouterr().out
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir()))
    with pytest.raises(CheckpointError) as exc:
        load_model(run)
    assert match in str(exc.value)


def test_bad_inputs_are_one_line_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _run_dir(tmp_path / "run", MLP)
    out = tmp_path / "o" / "p.parquet"

    def bad(table: pa.Table, match: str, *extra: str) -> None:
        src = tmp_path / "x.parquet"
        pq.write_table(table, src)
        argv = ["predict", "--run", str(run), "--input", str(src), "--out", str(out), *extra]
        _one_line_exit_2(argv, capsys, match)
        assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir()))

    strings = pa.table({"features": pa.array([["a", "b", "c"]] * 3, pa.list_(pa.string()))})
    bad(strings, "column 'features' must be fixed_size_list<float32>[D], got list<element: string>")
    named = pa.table({"a": [1.0, 2.0], "city": ["x", "y"], "c": [0.0, 1.0]})
    bad(named, "feature column 'city' is string, not numeric", "--feature-columns", "a,city,c")
    bad(named, "missing column features")
    bad(
        _features_table(np.zeros((2, 4), np.float32)),
        "features have width 4 but the model takes inputs 3",
    )
    bad(_features_table(np.full((2, 3), np.nan, np.float32)), "non-finite")
    bad(
        _features_table(np.zeros((2, 3), np.float32), prediction=[1.0, 2.0]),
        "already has a column 'prediction'",
    )
    bad(_features_table(np.zeros((0, 3), np.float32)), "holds no rows")
    src = tmp_path / "x.parquet"
    pq.write_table(_features_table(np.zeros((2, 3), np.float32)), src)
    _one_line_exit_2(
        ["predict", "--run", str(tmp_path / "nope"), "--input", str(src), "--out", str(out)],
        capsys,
        "does not exist",
    )
    _one_line_exit_2(
        [
            "predict",
            "--run",
            str(run),
            "--input",
            str(tmp_path / "nope.parquet"),
            "--out",
            str(out),
        ],
        capsys,
        "does not exist",
    )
    assert not out.parent.exists() or not any(out.parent.iterdir())
    # an existing --out is kept unless --overwrite
    out.parent.mkdir(exist_ok=True)
    out.write_bytes(b"keep")
    argv = ["predict", "--run", str(run), "--input", str(src), "--out", str(out)]
    _one_line_exit_2(argv, capsys, "exists (pass --overwrite")
    assert out.read_bytes() == b"keep"
    assert main([*argv, "--overwrite"]) == 0
    assert pq.read_table(out).num_rows == 2
    with pytest.raises(DataError, match="non-finite"):
        pq.write_table(_features_table(np.full((2, 3), np.inf, np.float32)), src)
        predict(run, src, tmp_path / "q.parquet")
    assert not (tmp_path / "q.parquet").exists()


def test_inference_imports_no_ray() -> None:
    code = "import sys, raymeta.inference; assert 'ray' not in sys.modules; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"
