"""Bad inputs of round 29: one ``raymeta: error:`` line and exit 2 before any work, raymeta's
own errors from the Python API, and good inputs not refused.

The same contract as ``test_bad_inputs.py`` (its ``run_bad`` runs a case in-process in a fresh
directory and asserts exit 2, one error line, no traceback and the directory unchanged). No
case starts Ray: each is refused before any work, and the work a command would start is
replaced, where a regression could reach it, by a function that fails the test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_bad_inputs import run_bad  # tests/ is on sys.path (rootdir-less test modules)

from raymeta.cli.main import build_parser, main

FROM_CONFIG = "(give {} on the command line or in --config FILE.yaml)"


def _no_work(*_: Any, **__: Any) -> Any:
    raise AssertionError("the bad input was not refused before the work started")


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """Exit code and stderr lines of ``raymeta ARGV`` run in-process."""
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's own refusals exit from inside parse_args
        rc = int(exc.code or 0)
    return rc, capsys.readouterr().err.splitlines()


# ------------------------------------- A4: one wording for a missing required option everywhere
@pytest.mark.parametrize(
    ("argv", "where", "missing"),
    [
        (["tune"], "tune", "--meta, --task, --trials and --out are"),
        (["tune", "--meta", "m", "--task", "sinusoid:0", "--out", "o"], "tune", "--trials is"),
        (["meta-train", "--local", "--steps", "1"], "meta-train", "--out is"),
        (["meta-train", "--steps", "1"], "meta-train", "--out is"),
        (["priors", "fit", "--tasks", "2"], "priors fit", "--meta is"),
        (["priors", "show"], "priors show", "--meta is"),
    ],
)
def test_missing_required_option_has_the_common_wording(
    argv: list[str], where: str, missing: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was: "--trials is required", "--out is required (the meta-checkpoint directory to
    write)", "--meta DIR is required": each command its own words, one option at a time."""
    them = "it" if missing.endswith(" is") else "them"
    line = run_bad(argv, tmp_path, capsys)
    assert line == f"raymeta: error: {where}: {missing} required {FROM_CONFIG.format(them)}"


def test_required_options_from_config_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Values given only in ``--config`` (and ``--population``, the old name of ``--trials``)
    get past the required check to the command's own checks: here the missing checkpoint."""
    cfg = tmp_path / "t.yaml"
    cfg.write_text("meta: nometa\ntask: sinusoid:0\ntrials: 2\nout: out\nquiet: true\n")
    line = run_bad(["tune", "--config", str(cfg)], tmp_path, capsys)
    assert "nometa" in line and "required" not in line, line
    cfg.write_text("meta: nometa\ntask: sinusoid:0\npopulation: 2\nout: out\nquiet: true\n")
    rc, err = _cli(["tune", "--config", str(cfg)], capsys)
    assert rc == 2 and "nometa" in err[-1] and "required" not in err[-1], err
    cfg.write_text("meta: nometa\n")
    for action in ("show", "fit"):
        line = run_bad(["priors", action, "--config", str(cfg)], tmp_path, capsys)
        assert "nometa" in line and "required" not in line, line
    cfg.write_text(f"out: {tmp_path / 'file' / 'o'}\n")
    (tmp_path / "file").write_text("x")
    line = run_bad(["meta-train", "--local", "--config", str(cfg)], tmp_path, capsys)
    assert "cannot write --out" in line, line


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        (["tune"], ["--meta", "--task", "--trials", "--out"]),
        (["meta-train"], ["--out"]),
        (["priors", "fit"], ["--meta"]),
        (["priors", "show"], ["--meta"]),
    ],
)
def test_help_still_shows_them_required(command: list[str], flags: list[str]) -> None:
    parser = build_parser()
    for name in command:
        sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        parser = sub.choices[name]  # type: ignore[attr-defined]
    usage = " ".join(parser.format_usage().split())
    for flag in flags:
        act = parser._option_string_actions[flag]
        assert f" {flag} {act.metavar or act.dest.upper()}" in usage, usage
        assert f"[{flag} " not in usage, usage
        assert (act.help or "").endswith("(required)")
        assert not act.required  # argparse leaves it to check_required (after --config)
