"""One writer per output directory, with real processes: while one process holds ``--out``,
every writer command on it exits 2 with ``raymeta: error: --out DIR is in use by pid N`` and
writes nothing; once the holder is SIGKILLed the kernel frees the lock and a run proceeds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from _kill_writer import ckpt  # tests/ is on sys.path (rootdir-less test modules)

from raymeta.core.checkpoint import load_meta_checkpoint, save_meta_checkpoint, write_priors
from raymeta.errors import ConfigError
from raymeta.lock import lock_path, output_lock

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
HOLD = (
    "import sys, time\n"
    "from raymeta.lock import output_lock\n"
    "with output_lock(sys.argv[1], sys.argv[2]):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(300)\n"
)


def _holder(path: Path, what: str = "--out") -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path), what], stdout=subprocess.PIPE, text=True, env=ENV
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "raymeta.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )


def _kill(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def test_second_writer_is_refused_until_the_first_dies(tmp_path: Path) -> None:
    meta = save_meta_checkpoint(tmp_path / "meta", ckpt("old"))
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"meta": [str(meta)], "strategies": ["meta+fixed-default"]}))
    sweep.write_text(sweep.read_text() + "tasks: 1\n")
    runs = tmp_path / "runs"
    runs.mkdir()
    out = runs / "out"
    holder = _holder(out)
    try:
        expected = f"raymeta: error: --out {out} is in use by pid {holder.pid}\n"
        small = ["--steps", "2", "--meta-batch", "2", "--val-tasks", "2", "--out", str(out)]
        tune = ["--meta", str(meta), "--task", "sinusoid:0", "--trials", "2", "--out", str(out)]
        for cmd in (
            ["meta-train", "--local", *small],
            ["meta-train", "--workers", "1", *small],
            ["tune", *tune],
            ["sweep", str(sweep), "--out", str(out)],
        ):
            proc = _cli(*cmd)
            assert (proc.returncode, proc.stderr) == (2, expected), (cmd, proc.stderr)
            assert sorted(os.listdir(runs)) == [".out.lock"]  # the holder's; nothing of ours
        # the same path spelled differently is the same lock
        same = runs / ".." / "runs" / "out"
        with pytest.raises(ConfigError, match=f"is in use by pid {holder.pid}"), output_lock(same):
            pass
    finally:
        _kill(holder)
    proc = _cli("meta-train", "--local", *small)
    assert proc.returncode == 0, proc.stderr
    assert load_meta_checkpoint(out).config["steps"] == 2
    assert sorted(os.listdir(runs)) == ["out"]  # the lock file goes with the run


def test_priors_are_not_written_while_the_checkpoint_is_in_use(tmp_path: Path) -> None:
    meta = save_meta_checkpoint(tmp_path / "meta", ckpt("old"))
    holder = _holder(meta, "meta-checkpoint")
    try:
        with pytest.raises(
            ConfigError, match=f"meta-checkpoint {meta} is in use by pid {holder.pid}"
        ):
            write_priors(meta, {"which": "new"})
        with pytest.raises(ConfigError, match="is in use"):
            save_meta_checkpoint(meta, ckpt("new"), overwrite=True)
    finally:
        _kill(holder)
    assert load_meta_checkpoint(meta).priors is None
    write_priors(meta, {"which": "new"})
    assert load_meta_checkpoint(meta).priors == {"which": "new"}
    assert sorted(os.listdir(tmp_path)) == ["meta"]


def test_lock_is_reentrant_in_one_process_and_leaves_no_parents(tmp_path: Path) -> None:
    deep = tmp_path / "a" / "b" / "out"
    with output_lock(deep):
        assert lock_path(deep).is_file()
        with output_lock(deep):  # a nested writer (meta-train -> save_meta_checkpoint)
            pass
        assert lock_path(deep).is_file()
    assert list(tmp_path.iterdir()) == []  # lock file and the parents made for it are gone
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user that can write read-only directories")
        with pytest.raises(ConfigError, match="cannot write --out"), output_lock(ro / "x" / "out"):
            pass
    finally:
        ro.chmod(0o700)
