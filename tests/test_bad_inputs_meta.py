"""Bad inputs around meta-checkpoints are one line and exit 2, before any work.

The same contract as ``test_bad_inputs.py`` (whose ``run_bad`` runs each case in-process in a
fresh directory and asserts exit 2, one ``raymeta: error:`` line, no traceback and the
directory unchanged), for what ``raymeta priors fit | show`` and ``raymeta tune`` read from a
tampered ``meta.json``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_bad_inputs import PF, TU_OUT, priors_ckpt, run_bad  # tests/ is on sys.path

from raymeta.core.checkpoint import load_meta_checkpoint
from raymeta.errors import CheckpointError

__all__ = ["priors_ckpt"]  # the session fixture (a checkpoint with priors) is shared


# ------------------------------------------------- a candidate's info in meta.json
@pytest.mark.parametrize(
    "key, value, match",
    [
        # was: 'raymeta: internal error: ValueError: could not convert string to float' (exit 1)
        ("inner_lr", "x", "inner_lr must be a finite number > 0, got 'x'"),
        # was: the fit ran (and wrote priors) with a NaN / negative / boolean default lr
        ("inner_lr", float("nan"), "inner_lr must be a finite number > 0"),
        ("inner_lr", -1, "inner_lr must be a finite number > 0"),
        ("inner_lr", True, "inner_lr must be a finite number > 0"),
        ("inner_steps", "x", "inner_steps must be an integer >= 0"),
        ("inner_steps", -3, "inner_steps must be an integer >= 0"),
        # was: an internal error in 'priors show' of a checkpoint with several candidates
        ("metrics", "x", "metrics must be a mapping"),
        ("algorithm", [1], "algorithm must be a string"),
    ],
)
@pytest.mark.parametrize("command", ["priors fit", "priors show", "tune"])
def test_tampered_candidate_info(
    command: str,
    key: str,
    value: object,
    match: str,
    priors_ckpt: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    shutil.copytree(priors_ckpt, tmp_path / "ckpt")
    meta_file = tmp_path / "ckpt" / "meta.json"
    meta = json.loads(meta_file.read_text())
    for c in meta["candidates"].values():
        c["info"][key] = value
    meta_file.write_text(json.dumps(meta))
    argv = {"priors fit": PF, "priors show": ["priors", "show", "--meta", "ckpt"], "tune": TU_OUT}
    line = run_bad(argv[command], tmp_path, capsys)
    assert match in line and "candidate 'mlp' info" in line


def test_tampered_candidate_info_in_the_python_api(priors_ckpt: Path, tmp_path: Path) -> None:
    shutil.copytree(priors_ckpt, tmp_path / "ckpt")
    meta_file = tmp_path / "ckpt" / "meta.json"
    meta = json.loads(meta_file.read_text())
    for c in meta["candidates"].values():
        c["info"]["inner_lr"] = "x"
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="inner_lr must be a finite number > 0"):
        load_meta_checkpoint(tmp_path / "ckpt")


def test_untampered_info_still_loads(priors_ckpt: Path) -> None:
    """What meta-train writes (a float lr, int steps, a metrics mapping) passes the check."""
    ck = load_meta_checkpoint(priors_ckpt)
    info = next(iter(ck.candidates.values())).info
    assert isinstance(info["inner_lr"], float) and isinstance(info["metrics"], dict)


# ------------------------------------------------- bench tune checks (b) before Ray starts
BT = ["bench", "tune", "--packing-steps", "0", "--tasks", "2"]


@pytest.mark.parametrize(
    "extra, match",
    [
        # each was: Ray started, (a) / the default meta-training ran, then an error mid-run
        (["--meta", "nopri"], "has no priors.json"),
        (["--meta", "ckpt", "--family", "digits"], "meta-trained on family 'sinusoid'"),
        (["--meta", "ckpt", "--task-option", "bogus=1"], "'bogus' cannot be overridden"),
        (["--meta", "ckpt", "--task-option", "val_size=abc"], "val_size must be an integer"),
        (["--task-option", "bogus=1"], "'bogus' cannot be overridden"),
        (["--task-option", "val_size=abc"], "val_size must be an integer"),
        (["--family", "digits", "--task-option", "val_size=0"], "digits: val_size"),
    ],
)
def test_bench_tune_checks_before_ray(
    extra: list[str],
    match: str,
    priors_ckpt: Path,
    ckpt_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    shutil.copytree(priors_ckpt, tmp_path / "ckpt")
    shutil.copytree(ckpt_dir, tmp_path / "nopri")
    (tmp_path / "nopri" / "priors.json").unlink(missing_ok=True)
    assert match in run_bad([*BT, *extra], tmp_path, capsys)


def test_bench_tune_check_passes_good_flags(priors_ckpt: Path) -> None:
    """The new checks refuse nothing that runs: a checkpoint with priors of --family, valid
    split sizes with and without --meta."""
    from raymeta.bench.tune import check_args
    from raymeta.cli.bench import bench_parser

    parser = bench_parser("tune")
    for argv, opts in [
        (["--meta", str(priors_ckpt), "--tasks", "3"], {"val_size": 5}),
        (["--tasks", "3"], {}),
        (["--family", "digits", "--tasks", "2"], {"val_size": 3}),
    ]:
        check_args(parser.parse_args(argv), opts)


def test_bench_priors_meta_of_another_family(
    priors_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """was: the sinusoid checkpoint's fit and evaluation ran with digits' presets and were
    reported as the digits row"""
    shutil.copytree(priors_ckpt, tmp_path / "ckpt")
    argv = ["bench", "priors", "--meta", "ckpt", "--family", "digits", "--out", "r.json"]
    assert "meta-trained on family 'sinusoid'" in run_bad(argv, tmp_path, capsys)


@pytest.mark.parametrize("out", ["ckpt", "ckpt/sub"])
def test_bench_sweep_out_inside_a_checkpoint(
    out: str, priors_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """was: the meta-training ran and saved its checkpoint and priors into ckpt/meta, then the
    sweep refused its results directory there (minutes in, files written)"""
    shutil.copytree(priors_ckpt, tmp_path / "ckpt")
    argv = ["bench", "sweep", "--tasks", "2", "--meta-steps", "2", "--out", out]
    assert "lies inside the meta-checkpoint" in run_bad(argv, tmp_path, capsys)


@pytest.mark.parametrize(
    "extra, match",
    [
        # each was: a meta-training and a priors fit, then a MemoryError (internal error) or
        # an evaluation that did not end
        (["--samples", "1000000000000"], "fine-tuning runs, more than the 1,048,576"),
        (["--draws", "1000000000000"], "fine-tuning runs"),
        (["--reference", "1000000000000"], "fine-tuning runs"),
        (["--samples", "1000000"], "fine-tuning runs"),
        (["--test-tasks", "1000000000"], "--test-tasks"),
    ],
)
def test_bench_priors_evaluation_size(
    extra: list[str], match: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", "priors", "--family", "sinusoid", "--out", "r.json", *extra]
    assert match in run_bad(argv, tmp_path, capsys)


def test_bench_engine_only_matching_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """was: the header lines, an empty table, exit 0 (and an empty --out records file)"""
    argv = [
        "bench",
        "engine",
        "--smoke-test",
        "--no-memory",
        "--only",
        "nomatch",
        "--out",
        "r.json",
    ]
    line = run_bad(argv, tmp_path, capsys)
    assert "--only 'nomatch' matches no workload" in line and "sinusoid-mlp-1step" in line
