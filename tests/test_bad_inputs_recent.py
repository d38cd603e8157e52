"""Bad inputs to the recently added commands and flags are one line and exit 2, before any work.

The same contract as ``test_bad_inputs.py`` (whose ``run_bad`` runs each case in-process in a
fresh directory and asserts exit 2, one ``raymeta: error:`` line, no traceback and the
directory unchanged), for ``raymeta bench fewshot | population | sweep | engine``. Every case
here used to start the benchmark (a late failure minutes in, a hang, or an internal error with
exit 1); none may start any work now, so each runs in well under a second after torch is
imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_bad_inputs import RO, run_bad  # tests/ is on sys.path (rootdir-less test modules)

FS = ["bench", "fewshot", "--suite", "sinusoid", "--budget", "smoke", "--quiet"]
POP = ["bench", "population", "--smoke-test", "--repeats", "1"]
ENG = ["bench", "engine", "--smoke-test", "--no-memory"]
SW = ["bench", "sweep", "--tasks", "2", "--meta-steps", "2", "--population", "2"]


# ------------------------------------------------- a JSON --out is checked before the run
@pytest.mark.parametrize("bench", [FS, POP, ENG, ["bench", "learning"], ["bench", "priors"]])
@pytest.mark.parametrize(
    "out, match",
    [
        (".", "is a directory"),  # was: the whole benchmark ran, then 'Device or resource busy'
        (RO + "/records.json", "not writable"),  # was: 'Operation not permitted' after the run
        ("afile/records.json", "not a directory"),
    ],
)
def test_bench_json_out_is_checked_first(
    bench: list[str], out: str, match: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "afile").write_text("a file, not a directory\n")
    line = run_bad([*bench, "--out", out], tmp_path, capsys)
    assert match in line and "--out" in line


def test_bench_json_out_check_leaves_the_namespace_alone() -> None:
    """The check is marked on the parser's action: ``bench priors`` writes ``vars(args)`` into
    its records, which must not gain a key."""
    from raymeta.cli.bench import bench_parser

    keys = set(vars(bench_parser("priors").parse_args([])))
    assert keys == {a.dest for a in bench_parser("priors")._actions if a.dest != "help"} | {"func"}


def test_bench_deprecated_json_is_checked_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--json`` (the deprecated spelling) becomes ``--out`` and is checked as it is; the
    deprecation warning is the one extra line."""
    from raymeta.cli.main import main

    rc = main([*ENG, "--json", str(tmp_path)])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("raymeta: error:")]
    assert rc == 2 and "Traceback" not in err
    assert len(errors) == 1 and "is a directory" in errors[0]


# ---------------------------------------------------------------------- bench fewshot
@pytest.mark.parametrize(
    "extra, match",
    [
        # was: a meta-training, a pretraining and two priors fits, then a hang listing the tasks
        (["--episodes", "1000000000000"], "--episodes must be <= 10000"),
        (["--episodes", "0"], "--episodes must be >= 1"),
        (["--setting", "bogus"], "--setting 'bogus'"),
        (["--seed", str(2**70)], "--seed"),
        (["--device", "bogus"], "unknown device"),
    ],
)
def test_bench_fewshot_flags(
    extra: list[str], match: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = run_bad([*FS, *extra], tmp_path, capsys)
    assert match in line


# ------------------------------------------------------------------------ bench sweep
@pytest.mark.parametrize(
    "extra, match",
    [
        # each was refused by the sweep config only after the meta-checkpoint was trained
        (["--population", "0"], "--population: value must be >= 1"),
        (["--population", "5000"], "--population must be <= 4096"),
        (["--steps-per-member", "0"], "--steps-per-member"),
        (["--steps-per-member", "2000000"], "--steps-per-member must be <="),
        (["--budget", "0"], "--budget"),  # the deprecated spelling
        (["--tasks", str(2**62)], "--tasks must be <= 10000"),
        (["--tasks", "1.5"], "expected an integer"),
        (["--meta-steps", "0"], "--meta-steps"),
        (["--batch-units", "0"], "--batch-units"),
        (["--repeat", "-1"], "--repeat"),
        (["--bare-repeats", "0"], "--bare-repeats"),
        (["--out", "afile"], "exists and is not a directory"),  # was: after meta-training
        (["--out", RO], "not writable"),
    ],
)
def test_bench_sweep_flags(
    extra: list[str], match: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "afile").write_text("a file, not a directory\n")
    line = run_bad([*SW, *extra], tmp_path, capsys)
    assert match in line


# ------------------------------------------------------------------- bench population
@pytest.mark.parametrize(
    "extra, match",
    [
        (["--device", "bogus"], "unknown device 'bogus'"),  # was: internal error, exit 1
        (["--device", "cuda:3"], "cuda"),  # was: AssertionError on a CPU-only torch
        (["--threads", str(2**62)], "--threads: value must be <= 1024"),  # was: overflow
        (["--threads", "0"], "--threads"),
        (["--members", "100000000000"], "memory"),  # was: the allocator's error, exit 1
        (["--members", "4", "0"], "--members"),
        (["--members", "1e3"], "expected an integer"),
        (["--steps-per-member", "0"], "--steps-per-member"),
        (["--repeats", "0"], "--repeats"),
    ],
)
def test_bench_population_flags(
    extra: list[str], match: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = run_bad([*POP, *extra], tmp_path, capsys)
    assert match in line


# ----------------------------------------------------------------------- bench engine
@pytest.mark.parametrize(
    "extra, match",
    [
        (["--min-time", "nan"], "finite"),  # was: timed the first implementation forever
        (["--min-time", "inf"], "finite"),  # likewise
        (["--min-time", "-1"], "--min-time"),
        (["--threads", "-1"], "--threads: value must be >= 1"),  # was: internal error
        (["--threads", str(2**62)], "--threads"),
    ],
)
def test_bench_engine_flags(
    extra: list[str], match: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = run_bad([*ENG, *extra], tmp_path, capsys)
    assert match in line


@pytest.mark.parametrize(
    "bench, text, match",
    [
        (ENG, "min_time: .inf\n", "finite"),
        (ENG, "threads: 0\n", "threads"),
        (["bench", "sweep"], "tasks: 20000\n", "--tasks must be <= 10000"),
        (POP, "threads: -2\n", "threads"),
    ],
)
def test_bench_config_values(
    bench: list[str], text: str, match: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "c.yaml").write_text(text)
    line = run_bad([*bench, "--config", "c.yaml"], tmp_path, capsys)
    assert match in line


# ------------------------------------------------ meta-train: options for other algorithms
MT = ["meta-train", "--local", "--steps", "2", "--meta-batch", "2", "--val-tasks", "2"]


@pytest.mark.parametrize("algo", ["reptile", "pretrain"])
def test_checkpoint_inner_needs_a_differentiated_inner_loop(
    algo: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was silently ignored (a run without the memory saving asked for), as the other options
    of some algorithms only (--learn-inner-lr, --multi-step-loss) are refused."""
    line = run_bad([*MT, "--out", "out", "--algo", algo, "--checkpoint-inner"], tmp_path, capsys)
    assert "checkpoint-inner" in line and algo in line


def test_checkpoint_inner_in_the_python_api() -> None:
    from raymeta.core.train import MetaTrainConfig
    from raymeta.errors import ConfigError

    with pytest.raises(ConfigError, match=r"checkpoint-inner .*\(got reptile"):
        MetaTrainConfig(algo="reptile", checkpoint_inner=True).validate()
    MetaTrainConfig(algo="fomaml", checkpoint_inner=True).validate()  # still valid


# --------------------------------------- the older benchmarks' counts are typed flags too
@pytest.mark.parametrize(
    "argv, match",
    [
        # each started its benchmark (training, Ray) instead of being refused
        (["bench", "learning", "--test-tasks", "0"], "--test-tasks"),  # was: internal error
        (["bench", "learning", "--outer-lr", "nan"], "--outer-lr"),
        (["bench", "meta-train", "--threads", "-1"], "--threads"),  # was: internal error
        (["bench", "meta-train", "--workers", "0"], "--workers"),
        (["bench", "meta-train", "--meta-batch", "0"], "--meta-batch"),
        # was: refused by the 4-worker run, after the in-process timing and the Ray start
        (["bench", "meta-train", "--workers", "4", "--meta-batch", "2"], "smaller than"),
        (["bench", "priors", "--samples", "0"], "--samples"),
        (["bench", "priors", "--tasks", "0"], "--tasks"),
        (["bench", "tune", "--trials", "0"], "--trials"),
        (["bench", "tune", "--tasks", "-1"], "--tasks"),
        (["bench", "tune", "--population", "0"], "--population"),  # the deprecated spelling
        # were refused by tune only after meta-training a checkpoint and the packing run
        (["bench", "tune", "--trials", "200000"], "--trials must be <= 100000"),
        (["bench", "tune", "--trials", "1000", "--members-per-trial", "100000"], "16,777,216"),
        (["bench", "tune", "--meta", "missing"], "does not exist"),  # was: after Ray started
    ],
)
def test_older_bench_flags(
    argv: list[str], match: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = run_bad(argv, tmp_path, capsys)
    assert match in line


# ------------------------------------------------------------ fit_priors' own arguments
@pytest.mark.parametrize(
    "args, match",
    [
        # was: AttributeError: 'str' object has no attribute 'candidates'
        (("runs/meta",), "ckpt must be a MetaCheckpoint"),
        # was: 'priors: replace() should be called on dataclass instances'
        ((None, {"n_tasks": 2}), "config must be a PriorFitConfig"),
    ],
)
def test_fit_priors_refuses_wrong_argument_types(
    args: tuple[object, ...], match: str, ckpt_dir: Path
) -> None:
    from raymeta import fit_priors, load_meta_checkpoint
    from raymeta.errors import ConfigError

    real = load_meta_checkpoint(ckpt_dir)
    ckpt, *rest = args
    with pytest.raises(ConfigError, match=match) as info:
        fit_priors(real if ckpt is None else ckpt, *rest)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


# ------------------------------------------------- meta_train / run_meta_train arguments
@pytest.mark.parametrize(
    "call, match",
    [
        # was: AttributeError: 'dict' object has no attribute 'validate'
        (lambda mt, rmt, cfg: mt({"steps": 2}), "cfg must be a MetaTrainConfig"),
        # was: ZeroDivisionError after the first step
        (lambda mt, rmt, cfg: mt(cfg, progress=print, log_every=0), "log-every must be >= 1"),
        # was: torch's RuntimeError listing every device type
        (lambda mt, rmt, cfg: mt(cfg, device="bogus"), "unknown device 'bogus'"),
        # was: TypeError from dataclasses.replace / pathlib, before Ray
        (lambda mt, rmt, cfg: rmt({"steps": 2}, "out", 1), "cfg must be a MetaTrainConfig"),
        (lambda mt, rmt, cfg: rmt(cfg, 5, 1), "out must be a directory path"),
        # was: accepted (Python's modulo takes a negative divisor), before Ray
        (lambda mt, rmt, cfg: rmt(cfg, "out", 1, log_every=-1), "log-every must be >= 1"),
    ],
)
def test_meta_train_api_refuses_wrong_arguments(call: Any, match: str, tmp_path: Path) -> None:
    from raymeta import MetaTrainConfig, meta_train, run_meta_train
    from raymeta.errors import ConfigError

    cfg = MetaTrainConfig(steps=2, meta_batch=2, val_tasks=2)
    with pytest.raises(ConfigError, match=match) as info:
        call(meta_train, run_meta_train, cfg)
    assert "\n" not in str(info.value)
    assert not list(tmp_path.iterdir())


def test_bench_sweep_out_with_a_foreign_meta_folder_is_refused_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--out DIR`` whose ``meta`` is not a meta-checkpoint: was refused only when saving the
    freshly meta-trained checkpoint into it."""
    (tmp_path / "o" / "meta").mkdir(parents=True)
    (tmp_path / "o" / "meta" / "notes.txt").write_text("someone else's\n")
    line = run_bad([*SW, "--out", "o"], tmp_path, capsys)
    assert "holds no meta-checkpoint" in line


def test_bench_without_what_names_the_benchmarks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``raymeta bench`` alone: argparse named the hidden remainder ("required: WHAT, rest")."""
    line = run_bad(["bench"], tmp_path, capsys)
    assert "which benchmark? one of engine," in line and "rest" not in line
