"""A meta-checkpoint path resolves to a complete checkpoint, old or new, whatever instant its
writer is SIGKILLed at, and the next write removes what the killed writer left.

The kill is real: ``tests/_kill_writer.py`` forks one writer per kill point N and the writer
SIGKILLs itself right before its N-th filesystem call (every ``os`` call that changes or opens
something, ``open``, ``flock`` and the directory exchange), for every N up to the number of
calls, so every gap between two calls is hit once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _kill_writer import ckpt  # tests/ is on sys.path (rootdir-less test modules)

from raymeta.core.checkpoint import (
    load_meta_checkpoint,
    priors_file,
    read_meta,
    save_meta_checkpoint,
    write_priors,
)
from raymeta.fileio import atomic_write_bytes, clean_stale, make_temp_dir, make_temp_file, umask

SCRIPT = Path(__file__).with_name("_kill_writer.py")
ROOT = Path(__file__).resolve().parents[1]


def _kill_every_step(work: Path, mode: str) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(work), mode],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["killed"] == list(range(info["count"]))  # every kill point but the last hit
    return info


def _which(path: Path, priors: bool) -> str:
    ck = load_meta_checkpoint(path)  # verifies every checksum
    if priors:
        assert ck.priors is not None
        return str(ck.priors["which"])
    return str(ck.metrics["which"])


def _only(parent: Path, name: str) -> None:
    assert sorted(os.listdir(parent)) == [name], sorted(os.listdir(parent))


@pytest.mark.parametrize(
    "mode",
    # the legacy priors.json path runs the same writer as "priors": heavy, so with -m slow
    ["save", "priors", pytest.param("priors-legacy", marks=pytest.mark.slow)],
)
def test_kill_between_any_two_calls_leaves_old_or_new(tmp_path: Path, mode: str) -> None:
    info = _kill_every_step(tmp_path, mode)
    priors = mode.startswith("priors")
    assert info["count"] >= 20 and ("exchange" in info["ops"]) == (mode == "save")
    seen = []
    for n in range(info["count"] + 1):
        ck = tmp_path / str(n) / "ck"
        which = _which(ck, priors)
        seen.append(which)
        assert which in ("old", "new"), n
        # the next write cleans the killed writer's leftovers (temporaries, lock file, old priors)
        if priors:
            write_priors(ck, {"which": "next"})
            pf = priors_file(ck)
            assert pf is not None
            assert sorted(os.listdir(ck)) == sorted(["meta.json", "weights", pf.name]), n
        else:
            save_meta_checkpoint(ck, ckpt("next"), overwrite=True)
        assert _which(ck, priors) == "next"
        _only(ck.parent, "ck")
    # old until one rename publishes the new version, new from then on: one switch, no gap
    assert seen[0] == "old" and seen[-1] == "new"
    switch = seen.index("new")
    assert seen[switch:] == ["new"] * (len(seen) - switch), seen


def test_fallback_without_exchange_is_recovered_by_the_next_write(tmp_path: Path) -> None:
    """Where the OS cannot exchange two directories, a kill between the two renames leaves the
    old tree aside; the next writer (here: its cleanup step) moves it back first."""
    info = _kill_every_step(tmp_path, "save-fallback")
    gaps = 0
    for n in range(info["count"] + 1):
        ck = tmp_path / str(n) / "ck"
        if not ck.exists():
            gaps += 1
            clean_stale(ck.parent, "ck")
        assert _which(ck, False) in ("old", "new"), n
        save_meta_checkpoint(ck, ckpt("next"), overwrite=True)
        _only(ck.parent, "ck")
    assert gaps == 1  # exactly the kill between the two renames


def test_live_writers_temporaries_are_kept(tmp_path: Path) -> None:
    """Only temporaries whose writer pid is dead are cleaned; a running writer's are not."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".report.json.{sleeper.pid}-abc123.tmp"
        live.write_text("partial")
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        stale = tmp_path / f".report.json.{dead.pid}-abc123.tmp"
        stale.write_text("partial")
        other = tmp_path / f".other.json.{dead.pid}-abc123.tmp"
        other.write_text("x")
        atomic_write_bytes(tmp_path / "report.json", b"{}")
        names = sorted(os.listdir(tmp_path))
        assert names == sorted(["report.json", live.name, other.name])  # other: another target
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_artifacts_get_umask_permissions(
    tmp_path: Path, mask: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files 0o666 & ~umask, directories 0o777 & ~umask (as ``open``/``mkdir`` give, not
    mkstemp/mkdtemp's 0600/0700), so pods with another uid read a shared volume; the run-signing
    key stays 0600 whatever the umask."""
    from raymeta.orchestration.tune.trust import key_file, load_key
    from raymeta.results import ResultSink, make_row
    from raymeta.tasks.parquet import write_tasks
    from raymeta.tasks.sinusoid import Sinusoid

    f_mode, d_mode = 0o666 & ~mask, 0o777 & ~mask
    old = os.umask(mask)
    try:
        assert umask() == mask

        def mode(p: Path | str) -> int:
            return os.stat(p).st_mode & 0o777

        fd, f = make_temp_file(tmp_path, "x")
        os.close(fd)
        assert mode(f) == f_mode and mode(make_temp_dir(tmp_path, "y")) == d_mode
        path = save_meta_checkpoint(tmp_path / "ck", ckpt("old"))
        assert mode(path) == mode(path / "weights") == d_mode
        assert {mode(p) for p in path.rglob("*") if p.is_file()} == {f_mode}
        write_priors(path, {"which": "p"})
        pf = priors_file(path)
        assert pf is not None and mode(pf) == mode(path / "meta.json") == f_mode
        sink = ResultSink(tmp_path / "results", "s")
        row = dict(sweep="s", strategy="a", task="t", seed=0, trial="t0", step=1)
        sink.append([make_row(**row, metric="val_loss", value=1.0, hparams={}, wall_s=0.1)], "k")
        parts = [p for p in (tmp_path / "results").rglob("*.parquet")]
        assert parts and {mode(p) for p in parts} == {f_mode}
        assert {mode(p) for p in (tmp_path / "results").rglob("*") if p.is_dir()} == {d_mode}
        fam = Sinusoid(task_shots=2, val_size=2, test_size=2)
        write_tasks(tmp_path / "d" / "tasks.parquet", [fam.task("train", 0)], meta_split="train")
        assert mode(tmp_path / "d" / "tasks.parquet") == f_mode
        monkeypatch.setenv("RAYMETA_KEY_FILE", str(tmp_path / "cfg" / "run-key"))
        assert len(load_key()) >= 16
        assert mode(key_file()) == 0o600 and mode(key_file().parent) == 0o700
    finally:
        os.umask(old)


def test_write_priors_touches_only_the_priors_and_the_manifest(tmp_path: Path) -> None:
    """No whole-directory copy: the weights keep their inode, other files stay as they are."""
    path = save_meta_checkpoint(tmp_path / "ck", ckpt("old"))
    (path / "notes.txt").write_text("mine")
    ino = os.stat(path / "weights" / "mlp.pt").st_ino
    t = time.time()
    write_priors(path, {"which": "a"})
    write_priors(path, {"which": "b"})
    assert os.stat(path / "weights" / "mlp.pt").st_ino == ino
    assert (path / "notes.txt").read_text() == "mine"
    meta = read_meta(path)
    assert meta["priors"] in meta["files"] and "priors.json" not in meta["files"]
    assert load_meta_checkpoint(path).priors == {"which": "b"}
    assert time.time() - t < 30
