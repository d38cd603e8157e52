"""Where an output may go: never inside a meta-checkpoint or a run's hidden state, and a run
refused before it starts leaves nothing behind (no parents, no lock file, no ``_schema.json``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from _kill_writer import ckpt  # tests/ is on sys.path (rootdir-less test modules)

from raymeta.cli.main import main
from raymeta.core.checkpoint import load_meta_checkpoint, save_meta_checkpoint
from raymeta.errors import CheckpointError, ConfigError
from raymeta.paths import probe_writable
from raymeta.results import ResultSink

SMALL = ["--local", "--steps", "2", "--meta-batch", "2", "--val-tasks", "2"]


def _err(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.startswith("raymeta: error: ") and err.count("\n") == 1, err
    return err


def test_out_inside_a_checkpoint_or_state_dir_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    meta = save_meta_checkpoint(tmp_path / "meta", ckpt("old"))
    before = sorted(p.relative_to(meta) for p in meta.rglob("*"))
    for inside in (meta / "weights", meta / "sub" / "out"):
        assert main(["meta-train", *SMALL, "--overwrite", "--out", str(inside)]) == 2
        assert f"lies inside the meta-checkpoint {meta}" in _err(capsys)
    assert sorted(p.relative_to(meta) for p in meta.rglob("*")) == before
    assert load_meta_checkpoint(meta).metrics == {"which": "old"}
    state = tmp_path / ".x.meta-train" / "out"
    assert main(["meta-train", *SMALL, "--out", str(state)]) == 2
    assert "inside the meta-train state directory" in _err(capsys)
    assert sorted(os.listdir(tmp_path)) == ["meta"]


def test_refused_runs_leave_no_parents(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    probe_writable(tmp_path / "a" / "b" / "out")
    assert list(tmp_path.iterdir()) == []
    assert (
        main(
            [
                "meta-train",
                *SMALL,
                "--family-option",
                "shots=abc",
                "--out",
                str(tmp_path / "x" / "out"),
            ]
        )
        == 2
    )
    _err(capsys)
    sink = ResultSink(tmp_path / "results", "s")  # nothing until the first rows
    assert sink.done_keys() == set() and list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError):
        sink.append([{"sweep": "other"}], key="k")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- object-store URIs


def _exit_code(argv: list[str]) -> int:
    """``main``'s exit status, whether it returns it or argparse exits with it."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.mark.parametrize(
    "argv",
    [
        ["meta-train", *SMALL, "--out", "s3://bucket/meta"],
        ["tune", "--meta", "m", "--task", "sinusoid:0", "--out", "s3://bucket/run"],
        ["sweep", "sweep.yaml", "--out", "gs://bucket/results"],
        ["predict", "--run", "r", "--input", "x.parquet", "--out", "s3://bucket/p.parquet"],
        ["quickstart", "--out", "abfs://c@a.dfs.core.windows.net/q"],
        ["report", "results", "--plots", "s3://bucket/plots"],
        ["bench", "engine", "--json", "s3://bucket/b.json"],
        ["data", "make-sinusoid", "--out", "nosuchfs://bucket/x.parquet"],
        ["data", "make-sinusoid", "--out", "hdfs://namenode:8020/x.parquet"],
    ],
)
def test_uri_outputs_are_one_line_errors_and_make_nothing(
    argv: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Never a local directory ``s3:``: a URI an option cannot take is refused at parse time,
    naming the options that take one; a URI pyarrow cannot open is refused before any work."""
    monkeypatch.chdir(tmp_path)
    assert _exit_code(argv) == 2
    err = _err(capsys)
    assert "--storage" in err or "cannot use this URI" in err, err
    assert list(tmp_path.iterdir()) == []


def test_file_uri_and_object_store_outputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from raymeta.paths import RemoteFile, writing
    from raymeta.tasks.parquet import scan_tasks

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "my data" / "tasks.parquet"
    uri = "file://" + str(out).replace(" ", "%20")
    assert main(["data", "make-sinusoid", "--out", uri, "--tasks", "5"]) == 0
    assert len(scan_tasks(out).files) == 1 and sorted(os.listdir(out.parent)) == [out.name]
    # a URI pyarrow.fs opens goes through it: mock:// is pyarrow's in-memory filesystem
    assert main(["data", "make-sinusoid", "--out", "mock:///b/t.parquet", "--tasks", "5"]) == 0
    assert "wrote mock:///b/t.parquet" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == ["my data"]
    # RemoteFile over pyarrow's LocalFileSystem: a temporary name, then one move
    target = f"file://{tmp_path}/remote/x.bin"
    with pytest.raises(RuntimeError), writing(RemoteFile.open(target, "--out", False)) as local:
        local.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert not (tmp_path / "remote").exists() or os.listdir(tmp_path / "remote") == []
    with writing(RemoteFile.open(target, "--out", False)) as local:
        local.write_bytes(b"whole")
    assert os.listdir(tmp_path / "remote") == ["x.bin"]
    assert (tmp_path / "remote" / "x.bin").read_bytes() == b"whole"
    with pytest.raises(ConfigError, match="exists"):
        RemoteFile.open(target, "--out", False)
    # from the API too: a URI that Path collapsed (/cwd/s3:/b/x) makes no directory 's3:'
    with pytest.raises(ConfigError, match="would create a local directory 's3:'"):
        probe_writable(Path("s3://bucket/x").absolute())
    with pytest.raises(CheckpointError, match="a URI, not a local path"):
        save_meta_checkpoint("s3://bucket/meta", ckpt("new"))
    assert sorted(os.listdir(tmp_path)) == ["my data", "remote"]


def test_missing_extras_are_one_line_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """matplotlib (raymeta[plots]) and scikit-learn (raymeta[pb2]) are optional: asking for
    what needs them without them is one line naming the extra, before anything is read."""
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.chdir(tmp_path)
    assert main(["report", "nowhere", "--plots", "plots"]) == 2
    assert "--plots needs matplotlib: pip install 'raymeta[plots]'" in _err(capsys)
    tune = ["tune", "--meta", "m", "--task", "sinusoid:0", "--out", "o", "--trials", "2"]
    for how in (["--scheduler", "pb2"], ["--strategy", "meta+learned+pb2"]):
        assert main([*tune, *how]) == 2
        assert "pb2 needs scikit-learn: pip install 'raymeta[pb2]'" in _err(capsys)
    assert list(tmp_path.iterdir()) == []
