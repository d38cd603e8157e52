"""`raymeta tune` on the shared real Ray: PBT exploits, a trial killed for real and retried,
outputs, resume of a killed driver (slow), warm start vs scratch through Tune (slow)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from raymeta.core.checkpoint import load_meta_checkpoint, save_meta_checkpoint, write_priors
from raymeta.core.train import MetaTrainConfig, meta_train
from raymeta.errors import ConfigError
from raymeta.finetune import fit_priors
from raymeta.results.reader import read_results

pytestmark = pytest.mark.ray


@pytest.fixture(scope="session")
def sinusoid_meta(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A briefly meta-trained sinusoid checkpoint with fitted priors (no Ray needed)."""
    path = tmp_path_factory.mktemp("tune-meta") / "meta"
    tr = meta_train(MetaTrainConfig(steps=100, meta_batch=10, val_tasks=5, seed=0))
    save_meta_checkpoint(path, tr.to_checkpoint())
    priors = fit_priors(
        load_meta_checkpoint(path),
        n_tasks=4,
        n_configs=16,
        max_steps=20,
        portfolio_size=4,
        select_tasks=0,  # tune's auto = meta+learned+pbt: these tests are about PBT
    )
    write_priors(path, priors.to_dict())
    return path


def test_pbt_exploits_retries_a_killed_trial_and_writes_outputs(
    ray_session: None, sinusoid_meta: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from raymeta.orchestration.tune.run import run_tune

    out, marker = tmp_path / "out", tmp_path / "crash-once"
    kw = dict(
        meta=sinusoid_meta,
        task="sinusoid:2",
        trials=4,
        members_per_trial=4,
        budget=4 * 4 * 40,
        interval=5,
        out=out,
        seed=1,
        verbose=0,
        name="pbt-run",
    )
    rep = run_tune(**{**kw, "verbose": 1}, max_failures=2, _crash_marker=str(marker))
    # verbose 1: plain progress lines on a non-terminal stderr, nothing on stdout
    captured = capfd.readouterr()
    assert f"tune: member-steps: {4 * 4 * 40}/{4 * 4 * 40} (100%)" in captured.err
    assert "member-steps" not in captured.out
    assert marker.is_file()  # one trial process really was SIGKILLed ...
    assert all(t["error"] is None for t in rep["trials"])  # ... and retried to completion
    assert any(e["kind"] == "restore" and e["trial"] == marker.read_text() for e in rep["lineage"])
    exploits = [e for e in rep["lineage"] if e["kind"] == "exploit"]
    assert len(exploits) > 0 and all(e["source"] != e["trial"] for e in exploits)
    assert rep["best"]["val_loss"] <= rep["initial_best_val_loss"]
    assert all(t["reports"] >= 8 for t in rep["trials"])  # 40 steps / 5 per report
    params = torch.load(out / "best_model.pt", weights_only=True)
    assert set(params) == {
        "body.1.weight",
        "body.1.bias",
        "body.3.weight",
        "body.3.bias",
        "head.weight",
        "head.bias",
    }
    assert 0 < rep["member_steps"] <= rep["budget"] == 4 * 4 * 40  # the budget is a cap
    df = read_results(out / "results").to_pandas()
    assert set(df["metric"]) == {"val_loss", "test_loss"}
    assert (df["metric"] == "test_loss").sum() == 1
    assert float(df.loc[df["metric"] == "test_loss", "value"].iloc[0]) == pytest.approx(
        rep["best"]["test_loss"]
    )
    assert json.loads((out / "report.json").read_text())["best"] == rep["best"]
    # a real tune run's results load in one line with pandas and pyarrow, in one part file
    import pandas as pd
    import pyarrow.parquet as pq

    assert len(pd.read_parquet(out / "results")) == len(df)
    flat = pq.read_table(out / "results").flatten()
    assert flat.num_rows == len(df) and str(flat.schema.field("hparams.lr").type) == "double"
    assert len(list((out / "results").glob("sweep=*/part-*.parquet"))) == 1
    # rerunning the finished run restores it (nothing retrained, no duplicate rows)
    rep2 = run_tune(**kw, max_failures=2)
    assert rep2["best"] == rep["best"] and read_results(out / "results").num_rows == len(df)
    with pytest.raises(ConfigError, match="different tune run"):
        run_tune(**{**kw, "seed": 2})
    with pytest.raises(ConfigError, match=r"different tune run \(differs in name\)"):
        run_tune(**{**kw, "name": "renamed"})
    with pytest.raises(ConfigError, match="pbt-run already exists"):  # a name taken in --storage
        run_tune(**{**kw, "out": tmp_path / "out2", "storage": str(out / "ray_results")})
    _ray_tune_tooling_sees_the_run(out, rep, df)


def _ray_tune_tooling_sees_the_run(out: Path, rep: dict, df: object) -> None:
    """--name names the experiment and the rows; Ray's own readers (ExperimentAnalysis,
    Tuner.restore(...).get_results(), TensorBoard) see every trial and its reports, and the
    loggers left no pickle beside the signed state (the rerun above verified and resumed)."""
    from ray import tune
    from ray.tune import ExperimentAnalysis

    from raymeta.orchestration.tune.trainable import tune_trainable

    exp = out / "ray_results" / "pbt-run"
    assert rep["files"]["experiment"] == str(exp.resolve())
    assert set(df["sweep"]) == {"pbt-run"}  # type: ignore[index]
    trials = {t["trial"]: t["reports"] for t in rep["trials"]}
    ea = ExperimentAnalysis(str(exp))
    frames = ea.trial_dataframes
    assert set(frames) == set(trials)
    for tid, frame in frames.items():
        assert {"val_loss", "best_val_loss", "trial_step"} <= set(frame.columns)
        # every report (a retried trial's recomputed ones twice; history.jsonl dedups them)
        assert len(frame) >= trials[tid] >= 8 and frame["val_loss"].notna().all()
    assert set(ea.dataframe(metric="best_val_loss", mode="min")["trial_id"]) == set(trials)
    grid = tune.Tuner.restore(str(exp), trainable=tune_trainable).get_results()
    assert len(grid) == 4 and all(len(grid[i].metrics_dataframe) >= 8 for i in range(4))
    assert min(grid[i].metrics["best_val_loss"] for i in range(4)) <= rep["best"]["val_loss"]
    # TensorBoard: event files in every trial's directory (a new file after each restart)
    assert len({p.parent for p in exp.glob("*/events.out.tfevents.*")}) == 4
    assert not list(exp.glob("*/params.pkl"))


@pytest.mark.slow
def test_killed_driver_resumes(sinusoid_meta: Path, tmp_path: Path) -> None:
    """SIGKILL the whole `raymeta tune` process group mid-run, rerun: it resumes and completes."""
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "raymeta.cli.main",
        "tune",
        "--meta",
        str(sinusoid_meta),
        "--task",
        "sinusoid:4",
        "--trials",
        "4",
        "--members-per-trial",
        "2",
        "--budget",
        str(4 * 2 * 200),
        "--interval",
        "10",
        "--out",
        str(out),
        "--quiet",
    ]
    env = {**os.environ, "RAY_ADDRESS": ""}
    proc = subprocess.Popen(
        cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    hist = out / "history.jsonl"
    while time.time() < deadline and (
        not hist.is_file() or len(hist.read_text().splitlines()) < 12
    ):
        time.sleep(1)
    assert hist.is_file(), "the run never reported"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "report.json").exists()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rep = json.loads((out / "report.json").read_text())
    assert all(t["error"] is None for t in rep["trials"]), rep["trials"]
    last: dict[str, int] = {}  # async PBT: an exploited trial jumps to its source's step
    for line in (out / "history.jsonl").read_text().splitlines():
        r = json.loads(line)
        last[r["trial"]] = max(last.get(r["trial"], 0), int(r["trial_step"]))
    assert len(last) == 4 and set(last.values()) == {200}
    assert any(e["kind"] == "restore" for e in rep["lineage"])  # trials continued from checkpoints


@pytest.mark.slow
def test_warm_start_beats_scratch_through_tune(
    ray_session: None, sinusoid_meta: Path, tmp_path: Path
) -> None:
    from raymeta.orchestration.tune.run import run_tune

    wins = 0
    for i in range(3):
        res = {}
        for init, prior in (("meta", "learned"), ("scratch", "broad")):
            rep = run_tune(
                sinusoid_meta,
                f"sinusoid:{10 + i}",
                trials=2,
                members_per_trial=8,
                budget=2 * 8 * 30,
                interval=10,
                scheduler="random",
                init=init,
                prior=prior,
                out=tmp_path / f"{init}{i}",
                verbose=0,
            )
            res[init] = rep["best"]["test_loss"]
        wins += res["meta"] < res["scratch"]
    assert wins >= 2


def test_gpus_per_trial_beyond_the_cluster_is_one_line_error(
    ray_session: None, sinusoid_meta: Path, tmp_path: Path
) -> None:
    """The session Ray has no GPU: asking for one per trial fails before anything is written."""
    from raymeta.errors import ClusterError
    from raymeta.orchestration.tune.run import run_tune

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "out"
    with pytest.raises(ClusterError, match="needs 1 GPUs but the Ray cluster has 0"):
        run_tune(
            meta=sinusoid_meta,
            task="sinusoid:2",
            trials=2,
            out=out,
            gpus_per_trial=1.0,
            verbose=0,
        )
    assert not (out / "report.json").exists()
    with pytest.raises(ConfigError, match="gpus-per-trial"):
        run_tune(meta=sinusoid_meta, task="sinusoid:2", trials=2, out=out, gpus_per_trial=-1)
