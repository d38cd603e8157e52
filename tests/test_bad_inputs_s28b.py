"""Bad ``raymeta bench`` flags that were refused only after work had run (or never): each is
now one ``raymeta: error:`` line and exit 2 before any meta-training, Ray start or task list.

The same contract as ``test_bad_inputs.py`` (its ``run_bad`` runs a case in-process in a fresh
directory and asserts exit 2, one error line, no traceback and the directory unchanged). The
work each command would start is replaced by a function that fails the test, so a regression
is a quick failure instead of minutes of meta-training or a Ray start; no case starts Ray.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_bad_inputs import run_bad  # tests/ is on sys.path (rootdir-less test modules)


def _no_work(*_: Any, **__: Any) -> Any:
    raise AssertionError("the bad input was not refused before the work started")


@pytest.fixture
def no_meta_training(monkeypatch: pytest.MonkeyPatch) -> None:
    import raymeta.core.train

    monkeypatch.setattr(raymeta.core.train, "meta_train", _no_work)


# ---------------------------------------- bench priors: every family and fit checked up front
@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        # was: the sinusoid benchmark (1,000 meta-steps, a fit, an evaluation) ran first
        (["--family", "sinusoid", "--family", "nope"], "unknown task family 'nope'"),
        (["--family", "sinusoid", "--family", "./x:Y"], "not an import path"),
        # was: refused by fit_priors after the family's meta-training
        (["--family", "sinusoid", "--configs", "99999999999"], "fine-tuning runs"),
        (["--configs", "100000"], "fine-tuning runs"),
        (["--family", "digits", "--tasks", "4096", "--configs", "4096"], "fine-tuning runs"),
    ],
)
def test_bench_priors_refuses_before_meta_training(
    argv: list[str],
    needle: str,
    no_meta_training: None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    line = run_bad(["bench", "priors", *argv], tmp_path, capsys)
    assert needle in line, line


def test_bench_priors_fit_limit_with_meta(
    ckpt_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With ``--meta`` (no meta-training) the fit's limit is still checked before the fit."""
    import raymeta.finetune

    mp = pytest.MonkeyPatch()
    mp.setattr(raymeta.finetune, "fit_priors", _no_work)
    try:
        argv = ["bench", "priors", "--family", "sinusoid", "--meta", str(ckpt_dir)]
        line = run_bad([*argv, "--configs", "99999999999"], tmp_path, capsys)
    finally:
        mp.undo()
    assert "fine-tuning runs" in line, line


# ------------------------------------ bench learning: --test-tasks bounded (was: endless list)
@pytest.mark.parametrize("flag", ["--test-tasks", "--eval-tasks"])
@pytest.mark.parametrize("value", ["10001", "99999999999999"])
def test_bench_learning_test_tasks_bounded(
    flag: str,
    value: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import raymeta.bench.learning

    monkeypatch.setattr(raymeta.bench.learning, "held_out_batch", _no_work)
    monkeypatch.setattr(raymeta.bench.learning, "meta_train", _no_work)
    line = run_bad(["bench", "learning", flag, value], tmp_path, capsys)
    assert f"{flag}: value must be <= 10000" in line, line


def test_bench_learning_test_tasks_limit_accepts_the_limit() -> None:
    from raymeta.bench.learning import MAX_TEST_TASKS
    from raymeta.cli.bench import bench_parser

    args = bench_parser("learning").parse_args(["--test-tasks", str(MAX_TEST_TASKS)])
    assert args.test_tasks == MAX_TEST_TASKS


# ------------------- bench tune: (a)'s budget (64 x --packing-steps) fits before Ray starts
@pytest.mark.parametrize("value", [str(2**63 - 1), str((2**63 - 1) // 64 + 1)])
def test_bench_tune_packing_steps_bounded(
    value: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was: accepted, then a ``--budget must be <= ...`` error once Ray had started and the
    default checkpoint had been meta-trained and its priors fitted."""
    import raymeta.orchestration.ray_runtime

    monkeypatch.setattr(raymeta.orchestration.ray_runtime, "ray_context", _no_work)
    line = run_bad(["bench", "tune", "--packing-steps", value, "--tasks", "0"], tmp_path, capsys)
    assert "--packing-steps: value must be <=" in line, line


def test_bench_tune_packing_steps_limit_is_a_valid_budget() -> None:
    """The largest accepted ``--packing-steps`` builds (a)'s tune request."""
    from raymeta.bench.tune import PACKING_MEMBERS
    from raymeta.cli.bench import bench_parser
    from raymeta.orchestration.tune.request import TuneRequest

    bp = bench_parser("tune")
    top = bp.parse_args(["--packing-steps", str((2**63 - 1) // PACKING_MEMBERS)]).packing_steps
    req = TuneRequest(
        "meta",
        "sinusoid:0",
        trials=4,
        members_per_trial=16,
        strategy="meta+broad+random",
        budget=PACKING_MEMBERS * top,
        interval=max(1, top // 4),
    )
    assert req.total_budget == PACKING_MEMBERS * top


# ------------------ bench meta-train: the largest --workers against the cluster before timing
def test_bench_meta_train_workers_past_the_cluster(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was: the in-process timing and every smaller worker count ran first; the refusal came
    from the too-large count's own Ray Train run. Ray is not started here: the cluster is
    one of 2 CPUs (``ray.cluster_resources``), the real ``check_resources`` refuses. (The
    embedded Ray's CPUs, checked before it starts, are left unknown here: that check is
    ``test_bad_inputs_s29b``'s.)"""
    import contextlib

    import ray

    import raymeta.bench.meta_train
    import raymeta.orchestration.ray_runtime

    monkeypatch.setattr(
        raymeta.orchestration.ray_runtime, "ray_context", lambda *a, **k: contextlib.nullcontext()
    )
    monkeypatch.setattr(raymeta.orchestration.ray_runtime, "embedded_cpus", lambda: None)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(raymeta.bench.meta_train, "in_process_rate", _no_work)
    monkeypatch.setattr(raymeta.bench.meta_train, "ray_rate", _no_work)
    argv = ["bench", "meta-train", "--workers", "1", "2", "--threads", "2"]
    line = run_bad(argv, tmp_path, capsys)
    assert "--workers 2 with --threads 2 CPUs each needs 4 CPUs" in line, line
    assert "has 2" in line, line
