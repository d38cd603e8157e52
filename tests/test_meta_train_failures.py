"""A failed Ray Train run ends in one line that carries the cause and says whether a rerun
resumes: an input error raised inside a worker (real, in the worker), a SIGKILLed Ray Train
controller (real), and the formatting of every failure kind Ray 2.60 raises from ``fit()``."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import pytest

from raymeta.core.train import MetaTrainConfig
from raymeta.errors import ConfigError
from raymeta.orchestration.meta_train.run_state import state_dir_for

CFG = MetaTrainConfig(steps=8, meta_batch=4, val_every=4, val_tasks=2)


def _fit(tmp: Path, workers: int, **debug: object) -> None:
    from raymeta.orchestration.meta_train.ray_train import train_distributed

    cfg = dataclasses.replace(CFG, shards=workers)
    train_distributed(
        cfg,
        tmp / "out",
        workers=workers,
        checkpoint_every=2,
        max_failures=0,
        progress=False,
        _debug={"fail_marker": str(tmp / "marker"), **debug},
    )


@pytest.mark.slow  # ~28 s; the default run keeps test_plugins_ray's bug-in-a-worker (same path)
def test_input_error_in_a_worker_is_named_and_not_promised_to_resume(
    ray_session: None, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as info:
        _fit(tmp_path, 2, raise_at_step=3, raise_kind="config", fail_rank=1)
    msg = str(info.value)
    assert (tmp_path / "marker").read_text().startswith("failed rank 1 at step 3")
    assert msg == (
        "meta-training failed on worker 1: injected bad option at step 3; "
        "rerunning the same command will fail the same way"
    )
    assert not (tmp_path / "out").exists()


_KILL_CONTROLLER = """
import sys
from pathlib import Path
from raymeta.errors import ClusterError
from raymeta.orchestration.ray_runtime import start_local_ray
import test_meta_train_failures as t

start_local_ray(num_cpus=2, include_dashboard=False, log_to_driver=False)
try:
    t._fit(Path(sys.argv[1]), 1, kill_controller_at_step=5)
except ClusterError as exc:
    print("ERR", str(exc))
"""


def test_killed_controller_is_one_line_that_promises_resume(tmp_path: Path) -> None:
    """In a Ray of its own (a subprocess): the SIGKILLed controller's worker group and
    placement group outlive it for a while and would starve the next test's run."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    env.pop("RAY_ADDRESS", None)
    p = subprocess.run(
        [sys.executable, "-c", _KILL_CONTROLLER, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("ERR ")]
    assert len(lines) == 1, p.stdout + p.stderr
    msg = lines[0][4:]
    assert (tmp_path / "marker").exists()
    assert msg.startswith("meta-training failed: the Ray Train controller died (")
    assert msg.endswith("rerun the same command to resume from the last checkpoint")
    assert (state_dir_for(tmp_path / "out") / "run.json").is_file()  # the rerun's resume point


def test_every_fit_failure_kind_is_one_line() -> None:
    import ray.exceptions
    import ray.train
    from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError

    from raymeta.orchestration.meta_train._failures import training_failure

    def one(exc: BaseException) -> str:
        err = training_failure(exc)
        assert err is not None and "\n" not in str(err)
        return str(err)

    died = ray.exceptions.ActorDiedError()
    health = WorkerHealthCheckFailedError("Worker health check failed:", failure=died)
    gloo = RuntimeError("[gloo] Connection closed by peer\nmore")
    # a worker process that died is reported, not the collective error it caused on its peer
    msg = one(ray.train.WorkerGroupError("header", {0: gloo, 1: health}))
    assert msg.startswith("meta-training failed on worker 1: its process died (")
    assert msg.endswith("resume from the last checkpoint")
    msg = one(ray.train.WorkerGroupError("h", {0: ValueError("boom\ntraceback")}))
    assert msg == (
        "meta-training failed on worker 0: ValueError: boom; "
        "rerun the same command to resume from the last checkpoint"
    )
    bad = ray.train.WorkerGroupError("h", {1: gloo, 0: ConfigError("unknown model 'tiny'")})
    err = training_failure(bad)
    assert isinstance(err, ConfigError) and "unknown model 'tiny'" in str(err)
    assert "fail the same way" in str(err)
    oom = ray.exceptions.OutOfMemoryError(
        "Task was killed due to the node running low on memory.\nx"
    )
    assert "killed by Ray's memory monitor (out of memory)" in one(oom)
    assert "the Ray Train controller died" in one(died)
    assert "in the Ray Train controller: lost" in one(
        ray.train.ControllerError(RuntimeError("lost"))
    )
    assert training_failure(KeyError("not Ray")) is None


# ----------------------------------------------------------------- driver kill, newest resume
def _manifests(store: Path) -> dict[int, Path]:
    """{step: checkpoint dir} of every checkpoint whose manifest and state.pt are complete."""
    import hashlib
    import json

    found = {}
    for man in store.glob("*/checkpoint_*/state.json"):
        try:
            m = json.loads(man.read_text())
            data = (man.parent / "state.pt").read_bytes()
        except (OSError, ValueError):
            continue
        if hashlib.sha256(data).hexdigest() == m["sha256"]:
            found[int(m["step"])] = man.parent
    return found


@pytest.mark.slow  # two CLI runs of a killed and a resumed meta-train (~1 min on an idle box)
def test_killed_driver_resumes_from_newest_checkpoint_on_disk(tmp_path: Path) -> None:
    """Ray's run snapshot lags the checkpoints on disk (measured: snapshot at step 5 with
    steps 10 and 15 on disk); the rerun must start from the newest verified one."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil
    import torch

    from raymeta.core.checkpoint import load_meta_checkpoint
    from raymeta.core.train import meta_train

    out, store = tmp_path / "out", tmp_path / "store"
    args = [sys.executable, "-m", "raymeta.cli.main", "meta-train", "--workers", "1"]
    args += ["--steps", "40", "--meta-batch", "4", "--val-every", "40", "--val-tasks", "2"]
    args += ["--checkpoint-every", "4", "--out", str(out), "--storage", str(store)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    driver = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tree: dict[int, psutil.Process] = {}
    try:
        deadline = time.monotonic() + 180
        while len(_manifests(store)) < 3:
            assert driver.poll() is None and time.monotonic() < deadline, "no checkpoints"
            for p in psutil.Process(driver.pid).children(recursive=True):
                tree.setdefault(p.pid, p)
            time.sleep(0.05)
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        # the Train worker may finish one more upload before Ray's fate-sharing kills it
        workers = [p for p in tree.values() if "RayTrainWorker" in _name(p)]
        psutil.wait_procs(workers, timeout=60)
    finally:
        for p in tree.values():  # only what this driver started (agents outlive it otherwise)
            with contextlib.suppress(psutil.Error):
                p.kill()
    on_disk = _manifests(store)
    newest = max(on_disk)
    assert newest < 40, "the run finished before the kill"
    p = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"meta-train: resuming at step {newest} on 1 worker(s)" in p.stdout, p.stdout
    # and the resumed run ends where an uninterrupted one does
    want = meta_train(MetaTrainConfig(steps=40, meta_batch=4, val_every=40, val_tasks=2)).params
    got = load_meta_checkpoint(out).candidate().params
    assert all(torch.allclose(got[k], want[k].detach(), atol=1e-6) for k in want)


def _name(p: object) -> str:
    import psutil

    try:
        return str(p.name())  # type: ignore[attr-defined]
    except psutil.Error:
        return ""
