"""``raymeta sweep --local``: the Ray-free sweep gives the Ray path's rows bit for bit, resumes
exactly once after a real SIGKILL, and ends a killed worker or a bad flag combination in one
line (issue 17: Ray's start-up costs more than a small sweep's fine-tuning)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import yaml

from raymeta.core.checkpoint import save_meta_checkpoint
from raymeta.core.train import MetaTrainConfig, meta_train
from raymeta.errors import ClusterError, ConfigError
from raymeta.orchestration.sweep.batch import plan_batches, run_batch
from raymeta.orchestration.sweep.config import SweepConfig, parse_sweep
from raymeta.orchestration.sweep.run import FLUSH_UNITS, run_sweep, run_unit
from raymeta.results import read_results
from raymeta.results.sink import ResultSink

ROW = ["strategy", "task", "seed", "trial", "step", "metric"]  # what identifies a row
PAUSED = Path(__file__).with_name("_paused_sweep.py")  # a sweep that waits to be killed


@pytest.fixture(scope="module")
def meta_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("local") / "meta"
    tr = meta_train(MetaTrainConfig(steps=20, meta_batch=4, val_every=20))
    save_meta_checkpoint(out, tr.to_checkpoint())
    return out


def _cfg(meta: Path, **kw: Any) -> SweepConfig:
    base: dict[str, Any] = {
        "name": "loc",
        "meta": [str(meta)],
        "strategies": ["scratch+broad+pbt", "meta+fixed-default"],
        "tasks": 4,
        "seeds": [0, 5],
        "population": 4,
        "steps_per_member": 8,
        "interval": 2,
    }
    return parse_sweep({**base, **kw})


def _rows(out: Path, sweep: str = "loc") -> pd.DataFrame:
    """The dataset's rows in one order, without wall times (a batch's clock is its own)."""
    t = read_results(out, sweep=sweep).to_pandas().drop(columns=["wall_s"])
    return t.sort_values(ROW, kind="stable").reset_index(drop=True)


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows as ``_rows`` gives them: one order, no wall times."""
    t = pd.DataFrame(rows).drop(columns=["wall_s"])
    return t.sort_values(ROW, kind="stable").reset_index(drop=True)


def _batches(cfg: SweepConfig, slots: int) -> pd.DataFrame:
    """The rows of the batches a sweep plans for ``slots``, from ``run_batch`` in this process."""
    plan = plan_batches(cfg.units(), slots, FLUSH_UNITS)
    return _frame([r for b in plan for rows in run_batch(b, cfg).rows().values() for r in rows])


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Same rows, float values bit for bit, same hyperparameters (the dataset stores every
    hyperparameter key, None where a row has none)."""
    assert len(a) == len(b)
    assert a[ROW].astype(str).equals(b[ROW].astype(str))
    assert a["value"].to_numpy().tobytes() == b["value"].to_numpy().tobytes()
    for x, y in zip(a["hparams"], b["hparams"], strict=True):
        assert {k: v for k, v in x.items() if v is not None} == {
            k: v for k, v in y.items() if v is not None
        }


def test_local_rows_equal_run_batch_and_run_unit(meta_dir: Path, tmp_path: Path) -> None:
    """16 units in 2 worker processes give the rows of the same batches run by ``run_batch``
    here, float values bit for bit, and ``run_unit``'s rows to float32 rounding (packed and
    lone matmuls round differently, tests/test_sweep_batched.py); one slot runs the batches
    in this process, bit for bit too, and gives back the caller's torch thread count."""
    cfg = _cfg(meta_dir)
    pool = tmp_path / "pool"
    got = run_sweep(cfg, pool, progress=False, local=True, max_concurrency=2)
    assert (got["units"], got["ran"]) == (16, 16)
    # the pool's start and stop are parts of the wall (bench sweep reports the rate without them)
    assert got["start_s"] > 0 and got["stop_s"] > 0
    assert got["start_s"] + got["stop_s"] < got["wall_s"]
    rows = _rows(pool)
    _same(rows, _batches(cfg, 2))
    alone = _frame([r for u in cfg.units() for r in run_unit(u, cfg)])
    assert rows[ROW].astype(str).equals(alone[ROW].astype(str))
    assert rows["value"].to_numpy() == pytest.approx(alone["value"].to_numpy(), rel=1e-4, abs=1e-6)

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        inproc = tmp_path / "inproc"
        run_sweep(cfg, inproc, progress=False, local=True, max_concurrency=1)
        assert torch.get_num_threads() == 2  # run_batch's one thread is not left behind
    finally:
        torch.set_num_threads(threads)
    _same(_rows(inproc), _batches(cfg, 1))
    again = run_sweep(cfg, inproc, progress=False, local=True)
    assert (again["units"], again["ran"]) == (16, 0)
    assert again["wall_s"] == again["start_s"] == again["stop_s"] == 0.0  # nothing started


def test_local_rows_equal_the_ray_path(ray_session: None, meta_dir: Path, tmp_path: Path) -> None:
    """The same sweep through Ray tasks and through local workers, both planned for 2 slots
    (so both run the same packed batches): the same rows, float values bit for bit."""
    cfg = _cfg(meta_dir, strategies=["scratch+broad+pbt", "meta+fixed-default+refit"])
    ray_run = run_sweep(cfg, tmp_path / "ray", progress=False, max_concurrency=2)
    assert ray_run["start_s"] > 0 and ray_run["start_s"] + ray_run["stop_s"] < ray_run["wall_s"]
    run_sweep(cfg, tmp_path / "local", progress=False, max_concurrency=2, local=True)
    ray_rows, local_rows = _rows(tmp_path / "ray"), _rows(tmp_path / "local")
    _same(local_rows, ray_rows)
    # whole batches in both: 8 batches of 2 units, each flushed at the end in one part
    assert len(list((tmp_path / "local" / "sweep=loc").glob("part-*.parquet"))) == 1


def _children(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc)."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            parent[int(d.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    found, frontier = set(), [pid]
    while frontier:
        p = frontier.pop()
        kids = {c for c, pp in parent.items() if pp == p and c not in found}
        found |= kids
        frontier += list(kids)
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killed_local_sweep_resumes_exactly_once(meta_dir: Path, tmp_path: Path) -> None:
    """A local sweep publishing 2 units per part is SIGKILLed (the driver alone, as ``kill -9
    PID`` does) after its first part: its workers die with it, so the output lock is free, and
    ``raymeta sweep --local`` finishes the sweep with no unit missing or duplicated."""
    spec = tmp_path / "sweep.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "kill",
                "meta": [str(meta_dir)],
                "strategies": ["scratch+broad+pbt", "meta+broad+pbt"],
                "tasks": 8,
                "population": 4,
                "steps_per_member": 40,
                "interval": 10,
            }
        )
    )
    out = tmp_path / "results"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    waiting = tmp_path / "waiting"
    proc = subprocess.Popen(
        [sys.executable, str(PAUSED), str(spec), str(out), str(waiting), "1", "--local"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and not waiting.exists():
            time.sleep(0.05)
        workers = _children(proc.pid)
        assert len(workers) == 2, proc.communicate(timeout=60)[0]
        os.kill(proc.pid, signal.SIGKILL)  # the driver only: its workers must follow
        proc.wait(timeout=30)
        deadline = time.time() + 10
        while time.time() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.05)
        assert not any(_alive(w) for w in workers)  # (zombies until init reaps them)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    done_before = len(ResultSink(out, "kill").done_keys())
    assert 0 < done_before < 16
    cmd = [sys.executable, "-m", "raymeta", "sweep", str(spec), "--out", str(out), "--local"]
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{done_before} already done" in rerun.stdout
    table = read_results(out, sweep="kill").to_pandas()
    finals = table[table.metric == "test_loss"]
    assert len(finals) == 16  # 2 strategies x 8 tasks x 1 seed, none missing
    assert not finals.duplicated(["strategy", "task", "seed"]).any()
    assert not table.duplicated(ROW).any()


FAMILY = """
import multiprocessing, os, signal, time
from pathlib import Path

from raymeta.tasks.sinusoid import Sinusoid

MARKER = Path({marker!r})


class Fragile(Sinusoid):
    # held-out task {bad} breaks while MARKER says how: "kill RESULTS" (SIGKILL in a worker
    # process, as the out-of-memory killer does, once RESULTS holds {bad} parts: every other
    # unit's, which the other worker finishes meanwhile) or "raise"
    def task(self, split, index):
        how = MARKER.read_text() if MARKER.exists() else ""
        if split == "test" and index == {bad}:
            if how.startswith("kill ") and multiprocessing.parent_process() is not None:
                parts, deadline = Path(how[5:]) / "sweep=frag", time.monotonic() + 60
                while len(list(parts.glob("part-*.parquet"))) < {bad} and time.monotonic() < deadline:
                    time.sleep(0.05)
                os.kill(os.getpid(), signal.SIGKILL)
            if how == "raise":
                raise ValueError("task {bad} is broken")
        return super().task(split, index)
"""


def _fragile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: int, tasks: int
) -> tuple[SweepConfig, Path, Path]:
    """A sweep of one-unit batches over ``FAMILY`` whose held-out task ``bad`` breaks as its
    marker file says; returns the config, the marker and the results directory."""
    name = f"fragile_{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "marker"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(FAMILY.format(marker=str(marker), bad=bad))
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    meta = tmp_path / "meta"
    tr = meta_train(MetaTrainConfig(family=f"{name}:Fragile", steps=3, meta_batch=4, val_every=3))
    save_meta_checkpoint(meta, tr.to_checkpoint())
    spec = {"name": "frag", "meta": [str(meta)], "strategies": ["meta+fixed-default"]}
    cfg = parse_sweep(
        {**spec, "tasks": tasks, "population": 2, "steps_per_member": 6, "interval": 3}
    )
    return cfg, marker, tmp_path / "results"


def _killed(cfg: SweepConfig, out: Path) -> set[str]:
    """Run the sweep into its killed worker: one ``ClusterError`` line; the keys kept."""
    with pytest.raises(ClusterError) as info:
        run_sweep(cfg, out, progress=False, local=True, max_concurrency=2, flush_s=0.0)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("sweep unit ")
    assert "a local worker process died, killed by a signal or out of memory" in msg
    assert msg.endswith("finished units are kept, rerun the same command to resume")
    return ResultSink(out, "frag").done_keys()


def test_killed_worker_with_batches_still_queued_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker killed while batches wait in the driver's queue (handing the next one to the
    broken pool raised ``BrokenProcessPool``: an internal error, and the batch just finished
    was lost): one line, the finished units kept, and the rerun runs the rest exactly once."""
    cfg, marker, out = _fragile(tmp_path, monkeypatch, bad=1, tasks=8)
    marker.write_text(f"kill {out}")
    done = _killed(cfg, out)
    keys = {int(u["task"]): u["key"] for u in cfg.units()}
    assert keys[0] in done and keys[1] not in done and len(done) < 7
    marker.unlink()
    assert run_sweep(cfg, out, progress=False, local=True, max_concurrency=2)["ran"] == 8 - len(
        done
    )
    table = read_results(out, sweep="frag").to_pandas()
    assert len(table[table.metric == "test_loss"]) == 8 and not table.duplicated(ROW).any()


def test_killed_or_failing_local_worker_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker SIGKILLed inside a unit (a user family that kills its own process on one
    held-out task) ends the sweep in one ``ClusterError`` line; the units finished before are
    kept, and once the family behaves the rerun finishes the rest exactly once. A unit that
    raises is one line naming its key and error."""
    cfg, marker, out = _fragile(tmp_path, monkeypatch, bad=5, tasks=6)  # task 5's last
    marker.write_text(f"kill {out}")
    done = _killed(cfg, out)
    assert {u["key"] for u in cfg.units() if u["task"] < 5} == done
    assert not any(k.endswith("/5/0") for k in done)

    marker.write_text("raise")
    with pytest.raises(ClusterError, match=r"failed \(ValueError: task 5 is broken\); finished"):
        run_sweep(cfg, out, progress=False, local=True, max_concurrency=2)
    with pytest.raises(ClusterError, match=r"failed \(ValueError: task 5 is broken\); finished"):
        run_sweep(cfg, out, progress=False, local=True, max_concurrency=1)

    marker.unlink()
    done = ResultSink(out, "frag").done_keys()
    got = run_sweep(cfg, out, progress=False, local=True, max_concurrency=2)
    assert got["ran"] == 6 - len(done)
    table = read_results(out, sweep="frag").to_pandas()
    finals = table[table.metric == "test_loss"]
    assert len(finals) == 6 and not table.duplicated(ROW).any()


def test_local_with_an_address_is_refused_before_any_work(meta_dir: Path, tmp_path: Path) -> None:
    """``--local --address`` is one ``raymeta: error:`` line and exit 2, nothing written; the
    Python API refuses ``local=True`` with an address the same way."""
    spec = tmp_path / "sweep.yaml"
    spec.write_text(yaml.safe_dump({"meta": [str(meta_dir)], "tasks": 1}))
    out = tmp_path / "r"
    cmd = [sys.executable, "-m", "raymeta", "sweep", str(spec), "--out", str(out), "--local"]
    proc = subprocess.run(
        [*cmd, "--address", "127.0.0.1:6379"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert "\n" not in err and err.startswith("raymeta: error: --local runs the sweep")
    assert "--address 127.0.0.1:6379" in err
    assert not out.exists() and not list(tmp_path.glob(".r*"))
    with pytest.raises(ConfigError, match="local=True runs the sweep on this machine without Ray"):
        run_sweep(_cfg(meta_dir), out, address="127.0.0.1:6379", local=True)
    assert not out.exists()


def test_local_from_config_file_imports_no_ray(meta_dir: Path, tmp_path: Path) -> None:
    """``local: true`` in ``--config`` runs the sweep locally like the flag; the command
    never imports Ray. ``local: true`` with an ``address`` there is refused like the flags."""
    spec = tmp_path / "sweep.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "cfg",
                "meta": [str(meta_dir)],
                "strategies": ["meta+fixed-default"],
                "tasks": 2,
                "population": 2,
                "steps_per_member": 4,
                "interval": 2,
            }
        )
    )
    out = tmp_path / "results"
    conf = tmp_path / "run.yaml"
    conf.write_text(yaml.safe_dump({"out": str(out), "local": True, "max_concurrency": 2}))
    script = (
        "import sys; from raymeta.cli.main import main; rc = main(sys.argv[1:]); "
        "print('ray imported:', 'ray' in sys.modules); sys.exit(rc)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, "sweep", str(spec), "--config", str(conf), "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ray imported: False" in proc.stdout
    assert len(read_results(out, sweep="cfg").to_pandas().query("metric == 'test_loss'")) == 2
    conf.write_text(yaml.safe_dump({"out": str(tmp_path / "r2"), "local": True, "address": "auto"}))
    proc = subprocess.run(
        [sys.executable, "-m", "raymeta", "sweep", str(spec), "--config", str(conf)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "--local runs the sweep" in proc.stderr
    assert not (tmp_path / "r2").exists()
