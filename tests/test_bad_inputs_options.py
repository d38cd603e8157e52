"""Inputs that were accepted silently and are now one line and exit 2, before any work.

The same contract as ``test_bad_inputs.py`` (its ``run_bad`` runs a case in-process in a fresh
directory and asserts exit 2, one ``raymeta: error:`` line, no traceback and the directory
unchanged), for three quiet overrides:

* a ``KEY=VALUE`` option given twice (``--task-option val_size=3 --task-option val_size=4``
  kept the last), on the command line, in a ``--config`` file and in a ``--candidate`` string;
* ``raymeta tune --interval`` above the steps a member trains (capped silently to them);
* ``raymeta quickstart --smoke-test`` replaced an explicit ``--steps/--tasks/--trials/--budget``
  with its presets: explicit sizes now win (a pure function, tested without running anything).

No case starts Ray or trains.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from test_bad_inputs import MT, run_bad  # tests/ is on sys.path (rootdir-less test modules)

from raymeta.errors import ConfigError

TUNE = ["tune", "--meta", "m", "--task", "sinusoid:0", "--trials", "2", "--out", "o"]


def _args(argv: list[str], cwd: Path | None = None) -> argparse.Namespace:
    """``argv`` parsed as ``main`` does (flags, then ``--config``, then renamed flags)."""
    import os

    from raymeta.cli._config import apply_config
    from raymeta.cli.main import build_parser
    from raymeta.options import apply_renamed

    args = build_parser().parse_args(argv)
    old = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        args = apply_config(args._parser, args, argv)
    finally:
        os.chdir(old)
    apply_renamed(args._parser, args)
    return args


# ------------------------------------------------------------------ a KEY=VALUE key given twice
def test_parse_options_refuses_a_repeated_key() -> None:
    from raymeta.options import parse_options

    with pytest.raises(ConfigError, match=r"^--task-option val_size given twice \(3, 4\)$"):
        parse_options(["val_size=3", "val_size=4"], "task")
    with pytest.raises(ConfigError, match=r"--model-option widths given twice"):
        parse_options(["widths=[8]", " widths =[8]"], "model")  # the same value, still twice
    with pytest.raises(ConfigError, match=r"--family-option ways given twice \('', 5\)"):
        parse_options(["ways=", "ways=5"], "family")
    assert parse_options(["a=1", "b=2"], "task") == {"a": 1, "b": 2}


@pytest.mark.parametrize(
    "argv, match",
    [
        (
            [*TUNE, "--task-option", "val_size=3", "--task-option", "val_size=4"],
            "--task-option val_size given twice (3, 4)",
        ),
        (
            [*MT, "--out", "o", "--family-option", "ways=5", "--family-option", "ways=3"],
            "--family-option ways given twice (5, 3)",
        ),
        (
            [*MT, "--out", "o", "--model-option", "widths=[8]", "--model-option", "widths=[16]"],
            "--model-option widths given twice ([8], [16])",
        ),
    ],
)
def test_repeated_option_key_on_the_command_line(
    argv: list[str], match: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert match in run_bad(argv, tmp_path, capsys)


@pytest.mark.parametrize(
    "config, match",
    [
        # a list of KEY=VALUE in the file is the flag's values: the same rule
        ("task_options: [val_size=3, val_size=4]\n", "--task-option val_size given twice (3, 4)"),
        # a mapping: the YAML reader refuses a duplicate key
        ("task_options: {val_size: 3, val_size: 4}\n", "val_size"),
        # one option under both its spellings: was the last one, silently
        (
            "task_options: [val_size=3]\ntask-options: [val_size=4]\n",
            "'task_options' and 'task-options' are the same option, given twice",
        ),
        ("trials: 2\ntrials: 3\n", "trials"),
    ],
)
def test_repeated_option_key_in_a_config_file(
    config: str, match: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "c.yaml").write_text(config)
    argv = ["tune", "--meta", "m", "--task", "sinusoid:0", "--out", "o", "--config", "c.yaml"]
    line = run_bad([*argv, *([] if "trials" in config else ["--trials", "2"])], tmp_path, capsys)
    assert match in line


def test_a_flag_replaces_the_config_files_options_whole(tmp_path: Path) -> None:
    """Flags win over the file (documented): the flag's list replaces the file's, no merge, so
    a key in both is no repeat."""
    (tmp_path / "c.yaml").write_text("task_options: [val_size=3, shots=2]\n")
    args = _args([*TUNE, "--config", "c.yaml", "--task-option", "val_size=4"], tmp_path)
    assert args.task_options == ["val_size=4"]


def test_candidate_string_refuses_a_repeated_key() -> None:
    from raymeta.core.candidates import CandidateConfig

    with pytest.raises(ConfigError, match=r"--candidate wide widths given twice \(\[8\], \[9\]\)"):
        CandidateConfig.parse("wide widths=[8] widths=[9]")


# ----------------------------------------------------- tune --interval above a member's steps
@pytest.mark.parametrize(
    "extra, match",
    [
        # was: silently reported every 10 steps
        (["--budget", "20", "--interval", "50"], "--interval 50 is more than the 10 steps"),
        (["--interval", "101"], "more than the 100 steps each member trains (the default budget"),
        (
            ["--members-per-trial", "3", "--budget", "60", "--interval", "11"],
            "--interval 11 is more than the 10 steps each member trains (--budget 60 // 6 members)",
        ),
    ],
)
def test_tune_interval_above_a_members_steps(
    extra: list[str], match: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert match in run_bad([*TUNE, *extra], tmp_path, capsys)


def test_tune_request_interval_bound() -> None:
    from raymeta.orchestration.tune.request import TuneRequest

    with pytest.raises(ConfigError, match="give --interval <= 10"):
        TuneRequest("m", "t", trials=2, budget=20, interval=11)
    with pytest.raises(ConfigError, match="give --interval <= 101"):  # 6500 // 64
        TuneRequest("m", "t", trials=4, members_per_trial=16, budget=6500, interval=102)
    assert TuneRequest("m", "t", trials=2, budget=20, interval=10).report_interval == 10
    assert TuneRequest("m", "t", trials=3, interval=100).report_interval == 100
    assert TuneRequest("m", "t", trials=2, budget=21, interval=10).report_interval == 10


# ------------------------------------------------ quickstart --smoke-test and explicit sizes
SIZES = ("steps", "tasks", "trials", "budget")


def _sizes(argv: list[str], cwd: Path | None = None) -> tuple[int, ...]:
    from raymeta.cli.quickstart import resolve_sizes

    args = resolve_sizes(_args(["quickstart", *argv], cwd))
    return tuple(getattr(args, name) for name in SIZES)


def test_quickstart_presets() -> None:
    from raymeta.cli.quickstart import DEFAULTS, SMOKE

    assert _sizes([]) == tuple(DEFAULTS[n] for n in SIZES) == (1500, 3, 4, 400)
    assert _sizes(["--smoke-test"]) == tuple(SMOKE[n] for n in SIZES) == (40, 1, 2, 40)


@pytest.mark.parametrize(
    "extra, sizes",
    [
        # each explicit size was replaced by the preset; now it wins, the rest stay presets
        (["--steps", "7"], (7, 1, 2, 40)),
        (["--tasks", "3"], (40, 3, 2, 40)),
        (["--trials", "4"], (40, 1, 4, 40)),
        (["--budget", "100"], (40, 1, 2, 100)),
        (["--population", "3"], (40, 1, 3, 40)),  # the deprecated spelling of --trials
        (
            ["--steps", "5", "--tasks", "2", "--trials", "3", "--budget", "30"],
            (5, 2, 3, 30),
        ),
    ],
)
@pytest.mark.filterwarnings("ignore::raymeta.errors.DeprecatedOption")  # --population
def test_quickstart_explicit_sizes_win_over_smoke_test(
    extra: list[str], sizes: tuple[int, ...]
) -> None:
    assert _sizes(["--smoke-test", *extra]) == sizes
    assert _sizes([*extra, "--smoke-test"]) == sizes  # order does not matter


def test_quickstart_config_sizes_win_over_smoke_test(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("smoke_test: true\nsteps: 9\n")
    assert _sizes(["--config", "c.yaml"], tmp_path) == (9, 1, 2, 40)
    assert _sizes(["--config", "c.yaml", "--steps", "3"], tmp_path) == (3, 1, 2, 40)


def test_quickstart_smoke_test_sizes_must_fit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An explicit --trials above the smoke-test budget names where the budget came from."""
    line = run_bad(["quickstart", "--out", "q", "--smoke-test", "--trials", "50"], tmp_path, capsys)
    assert "--budget 40 (the --smoke-test preset) gives the 50 trials less than one step" in line
    line = run_bad(["quickstart", "--out", "q", "--trials", "500"], tmp_path, capsys)
    assert "--budget 400 (the default)" in line
    line = run_bad(["quickstart", "--out", "q", "--trials", "5", "--budget", "4"], tmp_path, capsys)
    assert "--budget 4 gives the 5 trials" in line


def test_quickstart_help_says_explicit_sizes_win(capsys: pytest.CaptureFixture[str]) -> None:
    from raymeta.cli.main import main

    with pytest.raises(SystemExit):
        main(["quickstart", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "flags and --config win over it" in text
    assert "(default: 1500; with --smoke-" in text
