"""Bad inputs found by probing data convert, data validate, predict, report, plugins and the
Python API with crafted tables, run directories and arguments: each is one ``raymeta: error:``
line and exit 2 (or one ``raymeta.errors`` exception from the API), before any work.

The same contract as ``test_bad_inputs.py`` (its ``run_bad`` runs a case in-process in a fresh
directory and asserts exit 2, one error line, no traceback and the directory unchanged). No case
here starts Ray.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from _tune_run import write_tune_run  # tests/ is on sys.path
from test_bad_inputs import run_bad  # tests/ is on sys.path (rootdir-less test modules)

from raymeta.core.models import ModelSpec
from raymeta.errors import DataError

MLP = ModelSpec("mlp", (2,), 1, {"widths": [4]})
BIG = 1e300  # a finite float64 that float32 cannot hold


def _tune_run(root: Path, spec: ModelSpec = MLP) -> Path:
    """A tune run directory as ``raymeta tune`` writes it: best_model.pt + report.json."""
    return write_tune_run(root, spec, candidate=spec.name)


def _flat(x: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])


# ------------------------------------------- float64 values beyond float32's range: one line
def _task_file(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    n = len(x)
    split = pa.array(["train", "val", "test"] * (n // 3))
    pq.write_table(pa.table({"split": split, "features": _flat(x), "target": y}), path)


def _big_x() -> np.ndarray:
    x = np.zeros((30, 2))
    x[4, 1] = BIG
    return x


@pytest.mark.parametrize(
    "argv, setup",
    [
        (
            ["data", "validate", "--one-task", "t.parquet"],
            lambda d: _task_file(d / "t.parquet", _big_x(), np.zeros(30)),
        ),
        (
            ["data", "validate", "--one-task", "t.parquet"],
            lambda d: _task_file(d / "t.parquet", np.zeros((30, 2)), np.r_[BIG, np.zeros(29)]),
        ),
        (
            ["data", "convert", "--input", "t.parquet", "--out", "o.parquet"]
            + ["--feature-columns", "a", "--target-column", "y"],
            lambda d: pq.write_table(
                pa.table({"a": np.r_[np.zeros(29), BIG], "y": np.zeros(30)}), d / "t.parquet"
            ),
        ),
        (
            ["data", "convert", "--input", "t.parquet", "--out", "o.parquet"]
            + ["--feature-columns", "a", "--target-column", "y"],
            lambda d: pq.write_table(
                pa.table({"a": np.zeros(30), "y": np.r_[np.zeros(29), -BIG]}), d / "t.parquet"
            ),
        ),
        (
            ["predict", "--run", "run", "--input", "t.parquet", "--out", "p.parquet"],
            lambda d: (
                _tune_run(d / "run"),
                pq.write_table(pa.table({"features": _flat(_big_x())}), d / "t.parquet"),
            ),
        ),
    ],
)
def test_float64_beyond_float32_is_one_line(
    argv: list[str], setup: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """was: numpy's two-line 'RuntimeWarning: overflow encountered in cast' before the error
    line, which then called the finite value 1e300 'non-finite'."""
    setup(tmp_path)  # type: ignore[operator]
    line = run_bad(argv, tmp_path, capsys)
    assert "beyond float32's range" in line


def test_float64_beyond_float32_api() -> None:
    from raymeta.tasks.parquet import features_numpy

    col = pa.array([[0.0, BIG]], pa.list_(pa.float64(), 2))
    with pytest.raises(DataError, match="beyond float32's range"):
        features_numpy(col, 2, "x")
    with pytest.raises(DataError, match="non-finite"):  # a real inf keeps its name
        features_numpy(pa.array([[0.0, np.inf]], pa.list_(pa.float64(), 2)), 2, "x")


# ------------------------------------------------- one-class classification: nothing to learn
def _class_set(path: Path, labels: np.ndarray, split: list[str] | None = None) -> None:
    """A classification task set of ``len(labels) // 12`` tasks of 12 rows each."""
    n = len(labels)
    x = np.random.default_rng(0).normal(size=(n, 3))
    cols = {
        "task_id": pa.array([f"t{i // 12}" for i in range(n)]),
        "split": pa.array(split or ["train", "train", "val", "test"] * (n // 4)),
        "features": _flat(x),
        "target": pa.array(labels, pa.int64()),
    }
    pq.write_table(pa.table(cols), path)


MT_PQ = ["meta-train", "--local", "--steps", "2", "--meta-batch", "2", "--val-tasks", "1"]
MT_PQ += ["--family", "parquet", "--family-option", "path=s.parquet", "--out", "mt"]


@pytest.mark.parametrize(
    "argv, setup, match",
    [
        # was: 'valid task set', then a meta-training at meta-loss 0.0000 for every step
        (
            ["data", "validate", "s.parquet"],
            lambda d: _class_set(d / "s.parquet", np.zeros(48, np.int64)),
            "task 't0' has one class (0) only",
        ),
        (
            [*MT_PQ, "--family-option", "shots=1", "--family-option", "queries=1"],
            lambda d: _class_set(d / "s.parquet", np.r_[np.zeros(12), np.arange(36) % 3]),
            "task 't0' has one class (0) only",
        ),
        # the task's second class only in its test rows: 1-way episodes
        (
            [*MT_PQ, "--family-option", "shots=1", "--family-option", "queries=1"],
            lambda d: _class_set(
                d / "s.parquet",
                np.tile([0, 0, 0, 1], 12),
                ["train", "train", "val", "test"] * 12,
            ),
            "has 1 class in its train split",
        ),
        # digits refuses ways=1 ('ways must be >= 2'); the parquet family took it
        (
            [*MT_PQ, "--family-option", "ways=1", "--family-option", "replace=true"],
            lambda d: _class_set(d / "s.parquet", np.arange(48) % 2),
            "ways must be an integer in 2..",
        ),
        # was: 'valid task file' and a tune whose model always predicts the one class
        (
            ["data", "validate", "--one-task", "s.parquet"],
            lambda d: _class_set(d / "s.parquet", np.full(12, 3, np.int64)),
            "has one class (3) only",
        ),
        # was: exit 0 and a one-class task set written
        (
            ["data", "convert", "--input", "t.parquet", "--out", "o.parquet"]
            + ["--feature-columns", "a", "--target-column", "y", "--task-column", "t"],
            lambda d: pq.write_table(
                pa.table(
                    {
                        "a": np.zeros(40),
                        "y": np.r_[np.zeros(20, np.int64), np.arange(20) % 2],
                        "t": np.arange(40) // 20,
                    }
                ),
                d / "t.parquet",
            ),
            "task '0' has one class ('0') only in target column 'y'",
        ),
        (
            ["data", "convert", "--input", "t.parquet", "--out", "o.parquet", "--kind"]
            + ["classification", "--feature-columns", "a", "--target-column", "y"],
            lambda d: pq.write_table(
                pa.table({"a": np.zeros(40), "y": pa.array(["cat"] * 40)}), d / "t.parquet"
            ),
            "one class ('cat') only",
        ),
    ],
)
def test_one_class_classification_is_refused(
    argv: list[str], setup: object, match: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    setup(tmp_path)  # type: ignore[operator]
    assert match in run_bad(argv, tmp_path, capsys)
    assert not (tmp_path / "mt").exists() and not (tmp_path / "o.parquet").exists()


def test_one_class_convert_api(tmp_path: Path) -> None:
    from raymeta.tasks.parquet import convert_table

    pq.write_table(pa.table({"a": np.zeros(9), "y": np.ones(9, np.int64)}), tmp_path / "t.parquet")
    with pytest.raises(DataError, match="one class"):
        convert_table(tmp_path / "t.parquet", tmp_path / "o.parquet", ["a"], "y")
    # the same table as regression is fine
    convert_table(tmp_path / "t.parquet", tmp_path / "o.parquet", ["a"], "y", kind="regression")


def test_convert_names_the_users_target_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """was: "column 'target' holds non-finite values", a column the table does not have."""
    y = np.r_[np.nan, np.ones(29)]
    pq.write_table(pa.table({"a": np.zeros(30), "units": y}), tmp_path / "t.parquet")
    argv = ["data", "convert", "--input", "t.parquet", "--out", "o.parquet"]
    line = run_bad([*argv, "--feature-columns", "a", "--target-column", "units"], tmp_path, capsys)
    assert "column 'units' holds non-finite values" in line


# ------------------------------------------------------------ predict: columns, device, paths
def test_predict_feature_column_named_twice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """was: 'internal error: KeyError: 'Field "a" exists 2 times in schema'', exit 1."""
    _tune_run(tmp_path / "run")
    pq.write_table(pa.table({"a": np.zeros(4), "b": np.ones(4)}), tmp_path / "x.parquet")
    argv = ["predict", "--run", "run", "--input", "x.parquet", "--out", "p.parquet"]
    line = run_bad([*argv, "--feature-columns", "a,a"], tmp_path, capsys)
    assert "feature column 'a' is named twice" in line


@pytest.mark.parametrize(
    "kwargs, match",
    [
        # was: exit 0, predictions from columns 'a' and 'b' (the string's characters)
        ({"feature_columns": "ab"}, "feature columns must be a non-empty list"),
        ({"feature_columns": ["a", "a"]}, "named twice"),  # was: KeyError
        ({"feature_columns": [1, 2]}, "feature columns must be"),
        ({"device": "bogus"}, "unknown device 'bogus'"),  # was: torch's RuntimeError
        ({"device": 7}, "unknown device 7"),
        ({"out": None}, "out must be a path"),  # was: TypeError from os.fspath
        ({"run": 5}, "run must be a path"),
        ({"source": None}, "source must be a path"),
        ({"overwrite": "no"}, "overwrite must be true or false"),  # was: truthy, overwrote
    ],
)
def test_predict_api_wrong_types(kwargs: dict[str, object], match: str, tmp_path: Path) -> None:
    from raymeta import RaymetaError, predict

    run = _tune_run(tmp_path / "run")
    pq.write_table(
        pa.table({"ab": np.zeros(4), "a": np.zeros(4), "b": np.ones(4)}), tmp_path / "x.parquet"
    )
    call: dict[str, object] = {
        "run": run,
        "source": tmp_path / "x.parquet",
        "out": tmp_path / "p.parquet",
        "feature_columns": ["a", "b"],
    }
    call.update(kwargs)
    with pytest.raises(RaymetaError, match=match):
        predict(**call)  # type: ignore[arg-type]
    assert not (tmp_path / "p.parquet").exists()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"device": "bogus"}, "unknown device"),
        ({"run": 3}, "run must be a path"),
        ({"run": None}, "run must be a path"),
    ],
)
def test_load_model_api_wrong_types(kwargs: dict[str, object], match: str, tmp_path: Path) -> None:
    from raymeta import ConfigError, load_model

    call: dict[str, object] = {"run": _tune_run(tmp_path / "run"), **kwargs}
    with pytest.raises(ConfigError, match=match):
        load_model(**call)  # type: ignore[arg-type]


# ------------------------------------------------- API: checkpoints, priors, results paths
def test_write_priors_refuses_a_non_priors_mapping_and_keeps_the_old(
    ckpt_dir: Path, tmp_path: Path
) -> None:
    """was: write_priors(DIR, "abc") (or ``{}``) replaced the checkpoint's priors and returned;
    every later load_priors / tune of the checkpoint then failed."""
    import shutil

    from raymeta import ConfigError, load_meta_checkpoint, write_priors

    d = tmp_path / "ckpt"
    shutil.copytree(ckpt_dir, d)
    before = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()}
    for bad in ("abc", {}, None, [1]):
        with pytest.raises(ConfigError, match="priors must be a priors mapping"):
            write_priors(d, bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="priors must be JSON data"):
        write_priors(d, {"format": "raymeta-priors", "x": object()})  # was: TypeError
    assert {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()} == before
    assert load_meta_checkpoint(d).priors is None


@pytest.mark.parametrize(
    "call, match",
    [
        # each was a TypeError or AttributeError from deep inside
        (lambda rm, ck, d: rm.save_meta_checkpoint(d / "c", None), "ckpt must be a MetaCheckpoint"),
        (lambda rm, ck, d: rm.save_meta_checkpoint(5, ck), "path must be a path"),
        # was: a truthy string, the existing checkpoint replaced
        (
            lambda rm, ck, d: rm.save_meta_checkpoint(d / "keep", ck, overwrite="no"),
            "overwrite must be true or false",
        ),
        (lambda rm, ck, d: rm.load_meta_checkpoint(3), "path must be a path"),
        (lambda rm, ck, d: rm.load_meta_checkpoint(None), "path must be a path"),
        (lambda rm, ck, d: rm.write_priors(7, {}), "path must be a path"),
        (lambda rm, ck, d: rm.load_priors(str(d / "keep")), "load_priors takes a MetaCheckpoint"),
        (lambda rm, ck, d: rm.read_results(3), "root must be a path"),
        (lambda rm, ck, d: rm.report(3), "results paths must be a path or a list"),
        (lambda rm, ck, d: rm.report([d, None]), "a results path must be a path"),
        (lambda rm, ck, d: rm.report(d, pool="no"), "pool must be true or false"),
    ],
)
def test_api_wrong_types_are_config_errors(
    call: object, match: str, ckpt_dir: Path, tmp_path: Path
) -> None:
    import shutil

    import raymeta
    from raymeta import ConfigError

    shutil.copytree(ckpt_dir, tmp_path / "keep")
    ck = raymeta.load_meta_checkpoint(tmp_path / "keep")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(ConfigError, match=match):
        call(raymeta, ck, tmp_path)  # type: ignore[operator]
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


# ------------------------------------------------------- an edited results dataset marker
def _results(root: Path, marker: dict[str, object]) -> None:
    from raymeta.results import ResultSink
    from raymeta.results.synthetic import synthetic_rows

    ResultSink(root, "demo").append(synthetic_rows(sweep="demo", tasks=("a",), seeds=(0,)), "k")
    info = json.loads((root / "_schema.json").read_text())
    (root / "_schema.json").write_text(json.dumps({**info, **marker}))


@pytest.mark.parametrize(
    "marker, match",
    [
        ({"versions": 5}, "'versions' is not a list of version records"),
        ({"versions": "abc"}, "'versions' is not a list"),  # was: extended as ['a', 'b', 'c', ...]
        ({"versions": [1, 2]}, "'versions' is not a list"),
        ({"schema_version": True}, "schema version True"),  # was: read as version 1
    ],
)
def test_edited_results_marker_is_refused_before_any_work(
    marker: dict[str, object],
    match: str,
    ckpt_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """was: a sweep (or tune) into the dataset started Ray and ran its first units, then the
    first append died on 'TypeError: 'int' object is not iterable' (exit 1)."""
    from raymeta.results import ResultSink

    _results(tmp_path / "res", marker)
    body = f"meta: [{ckpt_dir}]\nstrategies: [meta+fixed-default]\ntasks: 1\npopulation: 1\n"
    (tmp_path / "sweep.yaml").write_text(body + "steps_per_member: 2\nname: s2\n")
    assert match in run_bad(["sweep", "sweep.yaml", "--out", "res"], tmp_path, capsys)
    assert match in run_bad(["report", "res"], tmp_path, capsys)
    with pytest.raises(DataError, match=match):
        ResultSink(tmp_path / "res", "s2")


# ------------------------------------------- predict: a report.json whose model spec was edited
@pytest.mark.parametrize(
    "widths",
    [
        [50_000, 50_000],  # 2.5e9 parameters: was built (10 GB allocated, initialised) first
        [10**8, 10**8],  # was: 'failed to build: ... can't allocate memory: 4e16 bytes'
    ],
)
def test_predict_checks_an_edited_spec_against_the_weights_before_building(
    widths: list[int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import resource

    run = _tune_run(tmp_path / "run")
    rep = json.loads((run / "report.json").read_text())
    rep["model"]["options"]["widths"] = widths
    (run / "report.json").write_text(json.dumps(rep))
    pq.write_table(pa.table({"features": _flat(np.zeros((4, 2)))}), tmp_path / "x.parquet")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    argv = ["predict", "--run", "run", "--input", "x.parquet", "--out", "p.parquet"]
    assert "does not match model 'mlp': missing" in run_bad(argv, tmp_path, capsys)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 1 << 20, f"peak memory grew by {grown_kib} KiB"


# ------------------------------------------------------- run_population: the public runner
def _task(x: torch.Tensor, y: torch.Tensor, kind: str = "regression") -> object:
    from raymeta import Task

    return Task("x", x, y, x[:2], y[:2], x[:2], y[:2], kind, 1)  # type: ignore[arg-type]


Z = torch.zeros(3, 1)
RUN_CASES = {
    # each was an AttributeError / TypeError / StopIteration / torch RuntimeError, or a result
    "task None": ({"task": None}, "task must be a raymeta Task"),
    "task a spec string": ({"task": "sinusoid:0"}, "task must be a raymeta Task"),
    "candidates a list": ({"candidates": ["mlp"]}, "candidates must be a non-empty mapping"),
    "candidates empty": ({"candidates": {}}, "candidates must be a non-empty mapping"),
    "configs one mapping": ({"configs": {"lr": 0.01}}, "configs must be a list of mappings"),
    "configs of strings": ({"configs": ["x"]}, "each config must be a mapping"),
    "seed -1": ({"seed": -1}, "seed must be >= 0"),
    "seed 1.5": ({"seed": 1.5}, "seed must be an integer"),
    "seed 2**62": ({"seed": 2**62, "init": "scratch"}, "seed must be <="),  # was: overflow
    "picks a string": ({"picks": "best"}, "picks must be a list"),
    "pbt a string": ({"pbt": "no"}, "pbt must be true or false"),
    "prior a string": ({"prior": "x"}, "prior must be a Prior"),  # was: ignored, ran
    "task with NaN inputs": (  # was: ran, a result of NaN losses
        {"task": _task(torch.full((3, 1), float("nan")), Z)},
        "train inputs must be finite",
    ),
    "task of the wrong width": (  # was: torch RuntimeError from a matmul
        {"task": _task(torch.zeros(3, 5), Z)},
        r"model 'mlp' takes inputs \(1,\)",
    ),
    "task with an empty train split": (
        {"task": _task(torch.zeros(0, 1), torch.zeros(0, 1))},
        "the train split has 0 inputs",
    ),
    "classification with float labels": (
        {"task": _task(Z, Z, "classification")},
        "labels must be integers",
    ),
}


@pytest.mark.parametrize("change, match", RUN_CASES.values(), ids=list(RUN_CASES))
def test_run_population_refuses_bad_arguments(
    change: dict[str, object], match: str, ckpt: object
) -> None:
    from raymeta import RaymetaError, make_family, run_population

    call: dict[str, object] = {
        "task": make_family("sinusoid").task("test", 0),
        "candidates": ckpt.candidates,  # type: ignore[attr-defined]
        "configs": [{"lr": 0.01}],
        "init": "meta",
        "steps": 2,
        "interval": 1,
        "seed": 0,
    }
    call.update(change)
    with pytest.raises(RaymetaError, match=match):
        run_population(**call)  # type: ignore[arg-type]


def test_priors_fit_seed_is_bounded_before_any_work(
    ckpt_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """was: 'internal error: ValueError: Overflow when unpacking long long' once the fit had
    reached its strategy runs (seconds to minutes in), exit 1."""
    import shutil

    from raymeta import ConfigError, PriorFitConfig

    shutil.copytree(ckpt_dir, tmp_path / "ckpt")
    argv = ["priors", "fit", "--meta", "ckpt", "--tasks", "2", "--configs", "4"]
    line = run_bad([*argv, "--seed", str(2**63 - 1)], tmp_path, capsys)
    assert "priors: seed must be <= 4294967295" in line
    line = run_bad(["bench", "priors", "--seed", str(2**32)], tmp_path, capsys)
    assert "--seed: value must be <= 4294967295" in line
    with pytest.raises(ConfigError, match="seed must be <="):
        PriorFitConfig(seed=2**40)
