"""Ray Train meta-training: equivalence with the in-process engine, resume, a real worker kill,
and the bad-input contract of ``raymeta meta-train``.

Every ``TorchTrainer.fit()`` costs ~20 s here, so the suite runs exactly four: one
uninterrupted W=2 run (the reference), one with a SIGKILLed worker and retries, and an
interrupted run plus its rerun. Bad input is checked through the CLI in subprocesses, none of
which reaches ``fit()``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from raymeta.core.checkpoint import load_meta_checkpoint
from raymeta.core.train import MetaTrainConfig, MetaTrainer, meta_train, msl_weights
from raymeta.errors import ClusterError, ConfigError
from raymeta.orchestration.meta_train.run_state import begin_run, plan_run, state_dir_for

W = 2
# meta-batch 9 over 2 workers: shards of 5 and 4 tasks (the documented uneven split).
CFG = MetaTrainConfig(
    family="sinusoid",
    algo="maml",
    inner_steps=2,
    inner_lr=0.01,
    steps=20,
    meta_batch=9,
    dtype="float64",
    val_every=10,
    val_tasks=8,
    shards=W,
    # MAML++ options, so the resume at step 10 lands inside the multi-step loss, past the
    # first-order phase and mid-way down the cosine schedule
    multi_step_loss=15,
    learn_inner_lr=True,
    outer_schedule="cosine",
    outer_lr_min=1e-4,
    first_order_until=8,
)
CLI = [sys.executable, "-m", "raymeta.cli.main", "meta-train"]


def _run(tmp: Path, name: str, **kw: Any) -> Any:
    from raymeta.orchestration.meta_train.ray_train import train_distributed

    kw.setdefault("progress", False)
    return train_distributed(CFG, tmp / name, workers=W, checkpoint_every=5, **kw)


def _max_rel(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-30)) for k in a)


@pytest.fixture(scope="module")
def reference(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    tmp = tmp_path_factory.mktemp("mt")
    res = _run(tmp, "ref", _debug={"record_first_grad": True, "first_grad_path": str(tmp / "grad")})
    return tmp, res


@pytest.fixture(scope="module")
def in_process() -> MetaTrainer:
    return meta_train(CFG)


def test_first_meta_gradient_equals_in_process_engine(reference: tuple[Path, Any]) -> None:
    tmp, _ = reference
    for rank in range(W):
        got = torch.load(tmp / f"grad.rank{rank}.pt", weights_only=True)
        ref_tr = MetaTrainer(CFG)  # world 1: all shards of step 0 in one vmapped batch
        _, want = ref_tr.local_grad(0)
        assert _max_rel(got, want) <= 1e-6
        # and against the engine on the whole meta-batch with the mean reduction (step 0's
        # MAML++ options: first-order, multi-step loss weights)
        _, mean = ref_tr.engine.meta_grad(
            {k: v.detach() for k, v in ref_tr.params.items()},
            ref_tr.draw(0),
            reduction="mean",
            first_order=True,
            step_weights=msl_weights(CFG.inner_steps, 0, CFG.multi_step_loss),
        )
        assert _max_rel({k: v / CFG.meta_batch for k, v in got.items()}, mean) <= 1e-6


def test_params_after_20_steps_match_in_process(
    reference: tuple[Path, Any], in_process: MetaTrainer
) -> None:
    tmp, res = reference
    assert res.state["step"] == CFG.steps and res.resumed_from == 0
    want = {k: v.detach() for k, v in in_process.params.items()}
    got = res.state["params"]
    assert all(v.dtype == torch.float64 for v in got.values())
    assert max(float((got[k] - want[k]).abs().max()) for k in want) <= 1e-5
    # --out holds a complete, verified meta-checkpoint with this config; the run state is gone.
    ckpt = load_meta_checkpoint(tmp / "ref")
    assert ckpt.config["shards"] == W and ckpt.config["steps"] == CFG.steps
    assert "val_loss" in ckpt.metrics
    for k, v in ckpt.candidate().params.items():
        assert torch.allclose(v, want[k].float(), atol=1e-5)
    assert not state_dir_for(tmp / "ref").exists()
    assert sorted(p.name for p in tmp.iterdir() if p.name.startswith(".")) == []


@pytest.mark.slow  # the default run keeps the interrupted-run and killed-controller recoveries
def test_killed_worker_recovers_to_same_params(reference: tuple[Path, Any]) -> None:
    tmp, ref = reference
    marker = tmp / "killed-once"
    records: list[dict[str, Any]] = []
    res = _run(
        tmp,
        "killed",
        max_failures=1,
        storage=str(tmp / "store"),
        progress=records.append,
        _debug={"crash_at_step": 12, "crash_rank": 1, "crash_marker": str(marker)},
    )
    assert marker.read_text().startswith("killed rank 1 at step 12")
    # restarted from the newest checkpoint before the kill (step 10), even when the controller
    # had not yet polled the step-10 report (it polls workers every 2 s) when the worker died
    assert res.resumed_from == 10
    for k, v in ref.state["params"].items():
        assert torch.equal(res.state["params"][k], v), k
    # the progress stream saw both worker-group starts and every step at least once
    starts = [r["step"] for r in records if r["event"] == "start"]
    assert starts == [0, res.resumed_from]
    steps = sorted({r["step"] for r in records if r["event"] == "progress"})
    assert steps == list(range(1, CFG.steps + 1))
    assert all(
        r["tasks_per_s"] > 0 and r["cpu_tasks_per_s"] > 0
        for r in records
        if r["event"] == "progress"
    )
    # --storage holds the Ray Train run (left alone); the hidden run file next to --out is gone
    assert [p.name.startswith("killed-") for p in (tmp / "store").iterdir()] == [True]
    assert not state_dir_for(tmp / "killed").exists()


def test_interrupted_run_resumes_to_same_params(reference: tuple[Path, Any]) -> None:
    tmp, ref = reference
    marker = tmp / "interrupted"
    uri = (tmp / "uri-store").as_uri()  # a file:// URI: the same pyarrow path as s3:// or gs://
    with pytest.raises(ClusterError, match="rerun the same command to resume"):
        _run(
            tmp,
            "resumed",
            max_failures=0,
            storage=uri,
            _debug={"crash_at_step": 12, "crash_rank": 0, "crash_marker": str(marker)},
        )
    assert marker.exists() and not (tmp / "resumed").exists()
    assert (state_dir_for(tmp / "resumed") / "run.json").is_file()
    # a different config for the same --out is refused while the run is unfinished
    with pytest.raises(ConfigError, match="different config"):
        plan_run(dataclasses.replace(CFG, seed=1), tmp / "resumed")
    res = _run(tmp, "resumed", storage=uri)
    assert res.resumed_from == 10  # the newest checkpoint on storage, whatever Ray recorded
    for k, v in ref.state["params"].items():
        assert torch.equal(res.state["params"][k], v), k
    # rerunning a finished command does nothing and returns the same checkpoint
    again = _run(tmp, "resumed", storage=uri)
    assert again.seconds == 0.0 and again.checkpoint.metrics == res.checkpoint.metrics


def test_too_many_workers_or_gpus_is_refused_before_fit(ray_session: None, tmp_path: Path) -> None:
    from raymeta.orchestration.meta_train.ray_train import train_distributed

    with pytest.raises(ClusterError, match="needs 3 CPUs but the Ray cluster has 2"):
        train_distributed(
            dataclasses.replace(CFG, meta_batch=9), tmp_path / "o", workers=3, progress=False
        )
    with pytest.raises(ClusterError, match="GPUs but the Ray cluster has 0"):
        train_distributed(CFG, tmp_path / "o", workers=1, gpus_per_worker=1, progress=False)
    assert list(tmp_path.iterdir()) == []  # neither --out nor the hidden run state


# ----------------------------------------------------------------------------- CLI, no fit()
def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env)


def _one_line_error(p: subprocess.CompletedProcess[str], needle: str) -> None:
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.startswith("raymeta: error:")]
    assert len(lines) == 1 and needle in lines[0], p.stderr


def test_cli_unreachable_address_fails_fast(tmp_path: Path) -> None:
    t0 = time.monotonic()
    p = _cli("--address", "127.0.0.1:1", "--out", str(tmp_path / "o"), "--steps", "2")
    assert time.monotonic() - t0 < 30
    _one_line_error(p, "cannot reach a Ray cluster at 127.0.0.1:1")
    assert list(tmp_path.iterdir()) == []


def test_cli_too_many_workers_for_embedded_ray(tmp_path: Path) -> None:
    p = _cli("--workers", "64", "--meta-batch", "64", "--out", str(tmp_path / "o"), "--steps", "2")
    _one_line_error(p, "needs 64 CPUs")
    assert list(tmp_path.iterdir()) == []


def test_cli_bad_values_and_unwritable_out(tmp_path: Path) -> None:
    _one_line_error(
        _cli("--workers", "4", "--meta-batch", "3", "--out", str(tmp_path / "o")),
        "smaller than the number of shards/workers 4",
    )
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _one_line_error(
        _cli("--out", str(blocker / "o"), "--local", "--steps", "1"), "cannot write --out"
    )
    _one_line_error(_cli("--out", str(blocker), "--local", "--steps", "1"), "is not a directory")
    _one_line_error(_cli("--steps", "1"), "--out is required")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_cli_help_documents_split_and_storage() -> None:
    p = _cli("--help")
    text = " ".join(p.stdout.split())
    assert p.returncode == 0
    assert "the first (B mod W) shards get one extra task" in text
    assert "multi-node clusters need shared storage" in text


def test_cli_local_yaml_config_resume_refusal_and_overwrite(tmp_path: Path) -> None:
    cfg = tmp_path / "mt.yaml"
    cfg.write_text(
        "steps: 3\nmeta_batch: 5\nworkers: 2\nval_tasks: 4\nfamily_options: {}\nmodel_options: {widths: [8, 8]}\nlocal: true\n"
    )
    out = tmp_path / "out"
    p = _cli("--config", str(cfg), "--out", str(out))
    assert p.returncode == 0, p.stderr
    assert "step 3/3" in p.stdout and "wrote" in p.stdout
    meta = json.loads((out / "meta.json").read_text())
    assert meta["config"]["meta_batch"] == 5 and meta["config"]["shards"] == 2
    assert meta["config"]["model_options"] == {"widths": [8, 8]}
    # the in-process reference with the same shards gives the same parameters
    want = meta_train(MetaTrainConfig.from_dict(meta["config"])).params
    got = load_meta_checkpoint(out).candidate().params
    assert all(torch.allclose(got[k], want[k].detach(), atol=1e-6) for k in want)
    assert "nothing to do" in _cli("--config", str(cfg), "--out", str(out)).stdout
    _one_line_error(
        _cli("--config", str(cfg), "--out", str(out), "--steps", "4"),
        "a meta-checkpoint of a different config",
    )
    assert (out / "meta.json").read_text() == json.dumps(meta, indent=2, sort_keys=True) + "\n"
    p = _cli("--config", str(cfg), "--out", str(out), "--steps", "4", "--overwrite")
    assert p.returncode == 0, p.stderr
    assert json.loads((out / "meta.json").read_text())["config"]["steps"] == 4


def test_plan_refuses_other_config_for_unfinished_run(tmp_path: Path) -> None:
    plan = plan_run(CFG, tmp_path / "o")
    begin_run(plan, CFG)
    again = plan_run(CFG, tmp_path / "o")
    assert again.resuming and again.name == plan.name and again.storage == plan.storage
    with pytest.raises(ConfigError, match="different config"):
        plan_run(dataclasses.replace(CFG, steps=21), tmp_path / "o")
    with pytest.raises(ConfigError, match="keeps its state in"):
        plan_run(CFG, tmp_path / "o", storage=str(tmp_path / "elsewhere"))
    fresh = plan_run(dataclasses.replace(CFG, steps=21), tmp_path / "o", overwrite=True)
    assert not fresh.resuming and fresh.name != plan.name


def test_cli_option_parsing() -> None:
    from raymeta.options import parse_options

    assert parse_options(["ways=5", "rotations=false", "widths=[8, 8]", "name=abc"], "family") == {
        "ways": 5,
        "rotations": False,
        "widths": [8, 8],
        "name": "abc",
    }
    assert parse_options({"ways": 3}, "family") == {"ways": 3}
    assert parse_options(None, "model") == {}
    with pytest.raises(ConfigError, match="--model-option expects KEY=VALUE"):
        parse_options(["widths"], "model")
