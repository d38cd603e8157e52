"""Bad inputs found by probing tune, predict, sweep, report, data and quickstart with crafted
files and flags: each is one ``raymeta: error:`` line and exit 2, before any work.

The same contract as ``test_bad_inputs.py`` (its ``run_bad`` runs a case in-process in a fresh
directory and asserts exit 2, one error line, no traceback and the directory unchanged: no
output, no empty output folder, no file of the input touched). No case here starts Ray: each is
refused before it, so the whole file runs in seconds after torch is imported.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _tune_run import write_tune_run  # tests/ is on sys.path
from test_bad_inputs import run_bad  # tests/ is on sys.path (rootdir-less test modules)

from raymeta.core.models import ModelSpec
from raymeta.errors import ConfigError, DataError

MLP = ModelSpec("mlp", (3,), 1, {"widths": [8]})


def _features(n: int, d: int = 3, fill: float | None = None) -> pa.Table:
    x = np.zeros((n, d), np.float32) if fill is None else np.full((n, d), fill, np.float32)
    return pa.table({"features": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), d)})


def _run_dir(root: Path) -> Path:
    """A tune run directory as ``raymeta tune`` writes it, with its results folder."""
    write_tune_run(root, MLP)
    (root / "results").mkdir()
    return root


# ------------------------------------------------------------------------------ predict
@pytest.mark.parametrize(
    "out, match",
    [
        # was: best_model.pt replaced by the predictions (the run's model lost), exit 0
        ("run/best_model.pt", "would overwrite part of the tune run"),
        # was: report.json replaced, then 'run/report.json is truncated or not JSON'
        ("run/report.json", "would overwrite part of the tune run"),
        ("run/results/p.parquet", "would overwrite part of the tune run"),
        ("run/.trust/p.parquet", "would overwrite part of the tune run"),
    ],
)
def test_predict_never_overwrites_the_run_it_reads(
    out: str, match: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _run_dir(tmp_path / "run")
    pq.write_table(_features(4), tmp_path / "x.parquet")
    argv = ["predict", "--run", "run", "--input", "x.parquet", "--out", out, "--overwrite"]
    assert match in run_bad(argv, tmp_path, capsys)


def test_predict_out_inside_the_input_directory_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """was: the predictions were written into the input dataset (read back by the next run)."""
    _run_dir(tmp_path / "run")
    (tmp_path / "d").mkdir()
    pq.write_table(_features(4), tmp_path / "d" / "x.parquet")
    argv = ["predict", "--run", "run", "--input", "d", "--out", "d/p.parquet"]
    assert "lies inside the --input directory" in run_bad(argv, tmp_path, capsys)


@pytest.mark.parametrize(
    "table, match",
    [
        (_features(4, fill=float("nan")), "non-finite"),
        (
            pa.table({"features": pa.array([[1.0, 2.0, 3.0], None], pa.list_(pa.float32(), 3))}),
            "null",
        ),
        (pa.table({"features": pa.array([[1.0] * 3, [1.0] * 4], pa.list_(pa.float32()))}), "width"),
    ],
)
def test_predict_data_errors_leave_no_output_folder(
    table: pa.Table, match: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found while streaming the rows: was exit 2, but the new --out folders stayed behind."""
    _run_dir(tmp_path / "run")
    pq.write_table(table, tmp_path / "x.parquet")
    argv = ["predict", "--run", "run", "--input", "x.parquet", "--out", "o/a/p.parquet"]
    assert match in run_bad(argv, tmp_path, capsys)


def test_predict_api_refuses_the_same(tmp_path: Path) -> None:
    from raymeta.inference import predict

    run = _run_dir(tmp_path / "run")
    pq.write_table(_features(4), tmp_path / "x.parquet")
    model = (run / "best_model.pt").read_bytes()
    with pytest.raises(ConfigError, match="would overwrite part of the tune run"):
        predict(run, tmp_path / "x.parquet", run / "best_model.pt", overwrite=True)
    assert (run / "best_model.pt").read_bytes() == model
    pq.write_table(_features(4, fill=float("inf")), tmp_path / "x.parquet")
    with pytest.raises(DataError, match="non-finite"):
        predict(run, tmp_path / "x.parquet", tmp_path / "new" / "p.parquet")
    assert not (tmp_path / "new").exists()


# ------------------------------------------------------------------------- data convert
CONVERT = ["data", "convert", "--feature-columns", "a,b", "--target-column", "y"]


def _table(**change: object) -> pa.Table:
    cols: dict[str, object] = {
        "a": np.arange(30, dtype=float),
        "b": np.ones(30),
        "y": np.arange(30) % 3,
    }
    cols.update(change)
    return pa.table(cols)


@pytest.mark.parametrize(
    "table, match",
    [
        (_table(a=np.r_[np.nan, np.arange(29.0)]), "non-finite"),
        (_table(b=np.r_[np.inf, np.ones(29)]), "non-finite"),
        (_table(a=pa.array([None, *range(29)], pa.float64())), "null"),
        (_table(y=np.r_[np.nan, np.ones(29)]), "non-finite"),
    ],
)
def test_convert_data_errors_leave_no_output_folder(
    table: pa.Table, match: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found in the writing pass: was exit 2, but the new --out folder stayed behind."""
    pq.write_table(table, tmp_path / "t.parquet")
    argv = [*CONVERT, "--input", "t.parquet", "--out", "o/x.parquet"]
    assert match in run_bad(argv, tmp_path, capsys)


def test_convert_out_inside_the_input_directory_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """was: exit 0, the task set written into the table's own dataset directory."""
    from raymeta.tasks.parquet import convert_table

    (tmp_path / "d").mkdir()
    pq.write_table(_table(), tmp_path / "d" / "t.parquet")
    argv = [*CONVERT, "--input", "d", "--out", "d/x.parquet"]
    assert "lies inside the --input directory" in run_bad(argv, tmp_path, capsys)
    with pytest.raises(ConfigError, match="inside the input directory"):
        convert_table(tmp_path / "d", tmp_path / "d" / "x.parquet", ["a", "b"], "y")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["t.parquet"]


# --------------------------------------------------------------------------------- tune
TUNE = ["tune", "--meta", "ckpt", "--task", "sinusoid:0", "--trials", "2", "--budget", "8"]


@pytest.mark.parametrize(
    "record",
    ["[1]", "null", '{"fingerprint": [1]}', '{"fingerprint": "x"}', '{"fingerprint": {}}'],
)
def test_tune_refuses_a_tampered_run_record(
    record: str, ckpt_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """was: 'internal error: AttributeError: 'list' object has no attribute 'get'', exit 1."""
    import shutil

    shutil.copytree(ckpt_dir, tmp_path / "ckpt")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "run.json").write_text(record)
    line = run_bad([*TUNE, "--out", "out", "--quiet"], tmp_path, capsys)
    assert "not a raymeta tune run record" in line


def test_tune_relative_storage_is_made_absolute(tmp_path: Path) -> None:
    """was: Ray Tune read 'st' as a URI once Ray had started and run.json was written
    ('internal error: ArrowInvalid: URI has empty scheme', exit 1)."""
    from raymeta.orchestration.tune.run import _experiment

    storage, _ = _experiment(tmp_path / "out", "st/x", "n")
    assert Path(storage).is_absolute() and storage.endswith("st/x")
    assert _experiment(tmp_path / "out", "s3://bucket/x", "n")[0] == "s3://bucket/x"


# --------------------------------------------------------------------------- quickstart
QS = ["quickstart", "--out", "q", "--steps", "2"]
RUN0 = "q/tune/task0-meta-learned"


def _mkfile(path: str, text: str) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        (d / path).parent.mkdir(parents=True, exist_ok=True)
        (d / path).write_text(text)

    return setup


@pytest.mark.parametrize(
    "setup, match",
    [
        # each was refused only in stage 3, after meta-training and the priors fit
        (_mkfile("q/tune", "a file"), "is not a directory"),
        (_mkfile(f"{RUN0}/notes.txt", "someone else's"), "not a raymeta tune run directory"),
        (_mkfile(f"{RUN0}/run.json", "["), "not a raymeta tune run record"),
        (_mkfile(f"{RUN0}/run.json", '{"fingerprint": {"trials": 9}, "started": 1}'), "differs"),
    ],
)
def test_quickstart_checks_its_tune_runs_before_ray(
    setup: Callable[[Path], None],
    match: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    setup(tmp_path)
    assert match in run_bad(QS, tmp_path, capsys)


def _resume_dir(tmp_path: Path, ckpt_dir: Path) -> Path:
    """``out`` holding the run record of TUNE_RESUME's run (so a rerun would resume it)."""
    import shutil

    from raymeta.orchestration.tune.request import TuneRequest

    shutil.copytree(ckpt_dir, tmp_path / "ckpt")
    req = TuneRequest(
        meta=tmp_path / "ckpt", task="sinusoid:0", trials=2, budget=8, strategy="meta+broad+random"
    )
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "run.json").write_text(
        json.dumps({"fingerprint": req.fingerprint(), "started": 1.0})
    )
    return tmp_path / "out"


TUNE_RESUME = [*TUNE, "--strategy", "meta+broad+random", "--out", "out", "--quiet"]


@pytest.mark.parametrize(
    "entry, kind, match",
    [
        # was: 'internal error: TuneError' from the history callback, exit 1, after the run
        ("history.jsonl", "dir", "is not a regular file"),
        # were: 'Is a directory (.../.report.json...tmp)' once every trial had trained
        ("report.json", "dir", "is not a regular file"),
        ("best_model.pt", "dir", "is not a regular file"),
        ("results", "file", "is not a directory"),
        ("results/_schema.json", "garbage", "not JSON"),
    ],
)
def test_tune_resume_checks_what_it_will_write_before_ray(
    entry: str,
    kind: str,
    match: str,
    ckpt_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    p = _resume_dir(tmp_path, ckpt_dir) / entry
    p.parent.mkdir(parents=True, exist_ok=True)
    if kind == "dir":
        p.mkdir()
    else:
        p.write_text("{" if kind == "garbage" else "a file\n")
    assert match in run_bad(TUNE_RESUME, tmp_path, capsys)


def test_tune_history_with_edited_lines_is_read_without_them(tmp_path: Path) -> None:
    """was: an edited history.jsonl line (a string where a number goes) raised ValueError in
    write_outputs, after the whole run (exit 1); such lines are skipped like cut ones."""
    from raymeta.orchestration.tune.lineage import read_histories

    good = {"trial": "a", "val_loss": 1.0, "best_val_loss": 1.0, "trial_step": 1}
    good |= {"interval_member_steps": 2, "wall_time": 5.0, "events": "[]", "hparams": {}}
    edited = [
        {"interval_member_steps": "abc"},
        {"wall_time": "x"},
        {"wall_time": float("inf")},
        {"trial": [1]},
        {"hparams": 5},
        {"events": "[1]"},
        {"events": "{"},
    ]
    lines = [json.dumps(good)] + [
        json.dumps({**good, "wall_time": 6.0 + i, **e}) for i, e in enumerate(edited)
    ]
    lines += [json.dumps({**good, "trial_step": 2, "wall_time": 20.0}), '{"trial": "a", "val']
    (tmp_path / "h.jsonl").write_text("\n".join(lines))
    (h,) = read_histories(tmp_path / "h.jsonl")
    assert [(r["trial_step"], r["spent"]) for r in h.rows] == [(1, 2), (2, 4)]


# -------------------------------------------------------------------------------- sweep
SWEEP = (
    "meta: [ckpt]\nstrategies: [meta+fixed-default]\ntasks: 1\npopulation: 1\nsteps_per_member: 2\n"
)


@pytest.mark.parametrize(
    "out, match",
    [
        # each was exit 0: _schema.json and sweep=NAME/ parts written among the folder's files
        ("ckpt", "lies inside the meta-checkpoint"),
        ("ckpt/results", "lies inside the meta-checkpoint"),
        ("run", "lies inside the tune run"),
        ("run/results2", "lies inside the tune run"),
    ],
)
def test_sweep_out_inside_a_checkpoint_or_a_tune_run_is_refused(
    out: str, match: str, ckpt_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    shutil.copytree(ckpt_dir, tmp_path / "ckpt")
    _run_dir(tmp_path / "run")
    (tmp_path / "run" / "run.json").write_text('{"fingerprint": {}, "started": 1}')
    (tmp_path / "sweep.yaml").write_text(SWEEP)
    assert match in run_bad(["sweep", "sweep.yaml", "--out", out, "--quiet"], tmp_path, capsys)


# ------------------------------------------------------------------------ data validate
@pytest.mark.parametrize("column", ["task_id", "features", "target", "meta_split"])
def test_validate_refuses_a_column_named_twice(
    column: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """was: 'internal error: KeyError: 'Column target does not exist in schema'', exit 1 (and
    'task family 'parquet' failed to build: KeyError' from meta-train)."""
    from raymeta.tasks.parquet import write_tasks
    from raymeta.tasks.sinusoid import Sinusoid

    fam = Sinusoid(task_shots=3, val_size=3, test_size=3)
    write_tasks(
        tmp_path / "t.parquet",
        [fam.task(s, 0) for s in ("train", "val", "test")],
        meta_split=["train", "val", "test"],
    )
    t = pq.read_table(tmp_path / "t.parquet")
    pq.write_table(t.append_column(column, t[column]), tmp_path / "a.parquet")
    line = run_bad(["data", "validate", "a.parquet"], tmp_path, capsys)
    assert f"column {column!r} appears more than once" in line


@pytest.mark.parametrize("keys", [b"{{", b"5", b'[["k", "x"]]', b"[[1, 2, 3]]"])
def test_tune_resume_refuses_an_edited_results_part_before_ray(
    keys: bytes, ckpt_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """was: 'internal error: JSONDecodeError' (exit 1) when the finished run appended its rows."""
    from raymeta.results import ResultSink
    from raymeta.results.synthetic import synthetic_rows

    out = _resume_dir(tmp_path, ckpt_dir)
    ResultSink(out / "results", "tune").append(
        synthetic_rows(sweep="tune", tasks=("a",), seeds=(0,)), "k"
    )
    part = next((out / "results" / "sweep=tune").glob("part-*.parquet"))
    t = pq.read_table(part)
    meta = {**(t.schema.metadata or {}), b"raymeta.results.keys": keys}
    pq.write_table(t.replace_schema_metadata(meta), part)
    assert "unreadable list of its units" in run_bad(TUNE_RESUME, tmp_path, capsys)


def test_run_sweep_api_refuses_an_out_inside_a_checkpoint(ckpt_dir: Path, tmp_path: Path) -> None:
    """The Python API applies the CLI's check, before the output lock writes anything."""
    import shutil

    from raymeta.orchestration.sweep.config import parse_sweep
    from raymeta.orchestration.sweep.run import run_sweep

    shutil.copytree(ckpt_dir, tmp_path / "ckpt")
    before = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    cfg = parse_sweep(
        {"meta": [str(tmp_path / "ckpt")], "strategies": ["meta+fixed-default"], "tasks": 1}
    )
    with pytest.raises(ConfigError, match="sweep output .* lies inside the meta-checkpoint"):
        run_sweep(cfg, tmp_path / "ckpt" / "results", progress=False)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == before
