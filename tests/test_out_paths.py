"""Where an output may go: never inside a meta-checkpoint or a run's hidden state, and a run
refused before it starts leaves nothing behind (no parents, no lock file, no ``_schema.json``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from _kill_writer import ckpt  # tests/ is on sys.path (rootdir-less test modules)

from raymeta.cli.main import main
from raymeta.core.checkpoint import load_meta_checkpoint, save_meta_checkpoint
from raymeta.errors import ConfigError
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
