"""The CLI's conventions, checked over the whole parser tree in-process (every command,
sub-command and benchmark): plain-text help, every meaningful default shown, abbreviations
refused, flags win over a config file in every spelling, one name per idea (README "Command
line": the old spellings are deprecated aliases that still work with one warning)."""

from __future__ import annotations

import argparse
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from raymeta.cli._common import HelpFormatter, Parser
from raymeta.cli._config import apply_config
from raymeta.cli.bench import BENCHES, bench_parser
from raymeta.cli.main import build_parser, main
from raymeta.errors import DeprecatedOption
from raymeta.options import apply_renamed

# One name per idea (README "Command line"): the chosen flag, and spellings of the same idea
# that may appear only as deprecated aliases (``add_renamed``) of it.
CONVENTION = {
    "--overwrite": {"--force", "--replace", "--clobber"},
    "--smoke-test": {"--quick", "--smoke", "--fast"},
    "--out": {"--json", "--output", "--output-dir", "--out-dir", "-o"},
    "--trials": {"--population"},  # in tune and quickstart; bench sweep: members per unit
    "--test-tasks": {"--eval-tasks"},
    "--steps-per-member": {"--budget", "--steps"},  # --steps: meta-training steps elsewhere
}
# commands where a --population / --steps / --budget flag means something else (and is right)
OWN_MEANING = {
    "--population": {"raymeta bench sweep"},
    "--steps": {
        "raymeta quickstart",
        "raymeta meta-train",
        "raymeta bench learning",
        "raymeta bench meta-train",
    },
    "--budget": {
        "raymeta quickstart",
        "raymeta tune",
        "raymeta bench fewshot",
    },  # fewshot: a preset
}


def _walk(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for act in parser._actions:
        if isinstance(act, argparse._SubParsersAction):
            for sub in dict.fromkeys(act.choices.values()):
                yield from _walk(sub)


@pytest.fixture(scope="module")
def parsers() -> list[argparse.ArgumentParser]:
    return [*_walk(build_parser()), *(bench_parser(w) for w in BENCHES)]


def _visible(p: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in p._actions if a.help is not argparse.SUPPRESS]


def _aliases(p: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in p._actions if getattr(a, "renamed_to", None)]


def test_every_parser_refuses_abbreviations_and_shows_plain_help(
    parsers: list[argparse.ArgumentParser],
) -> None:
    assert len(parsers) >= 18  # 9 commands, priors x2, data x3, 6 benchmarks
    for p in parsers:
        assert isinstance(p, Parser) and p.allow_abbrev is False, p.prog
        assert issubclass(p.formatter_class, HelpFormatter), p.prog  # type: ignore[arg-type]
        text = p.format_help()
        assert "`" not in text, (p.prog, [ln for ln in text.splitlines() if "`" in ln])


def test_every_meaningful_default_is_shown_including_zero(
    parsers: list[argparse.ArgumentParser],
) -> None:
    for p in parsers:
        fmt = p._get_formatter()
        for act in _visible(p):
            d = act.default
            if not act.option_strings or d is None or d is False or d is argparse.SUPPRESS:
                continue
            assert "default" in fmt._get_help_string(act), (p.prog, act.option_strings)
    helps = {p.prog: " ".join(p.format_help().split()) for p in parsers}
    assert (
        "--seed SEED seed of the initialization and of every task draw (default: 0)"
        in (helps["raymeta meta-train"])
    )
    gpus = helps["raymeta tune"].split("--gpus-per-trial GPUS_PER_TRIAL ", 1)[1]
    assert "(default: 0.0)" in gpus.split(" --", 1)[0]


def test_one_name_per_idea(parsers: list[argparse.ArgumentParser]) -> None:
    for p in parsers:
        for act in _visible(p):
            for opt in act.option_strings:
                for chosen, others in CONVENTION.items():
                    if opt in others and p.prog not in OWN_MEANING.get(opt, ()):
                        pytest.fail(f"{p.prog} {opt}: the convention is {chosen}")
            # what a command writes is always the --out flag, never a positional
            if not act.option_strings:
                assert "out" not in act.dest.lower(), (p.prog, act.dest)
        for act in _aliases(p):
            new = "--" + act.renamed_to.replace("_", "-")  # type: ignore[attr-defined]
            assert new in p._option_string_actions, (p.prog, act.dest, new)
            for opt in act.option_strings:
                assert opt not in CONVENTION, (p.prog, opt, "a chosen name is never an alias")


def _required(p: argparse.ArgumentParser) -> list[str]:
    """The command's required options with some value (e.g. ``bench fewshot --suite``)."""
    out: list[str] = []
    for act in p._actions:
        if act.required and act.option_strings:
            out += [act.option_strings[0], str(next(iter(act.choices or ["x"])))]
    return out


def _value(act: argparse.Action, tmp: Path) -> list[str]:
    if act.nargs == 0:
        return []
    return [str(tmp / "x.json") if "out" in act.renamed_to else "3"]  # type: ignore[attr-defined]


def test_every_deprecated_alias_works_and_warns_once(
    parsers: list[argparse.ArgumentParser], tmp_path: Path
) -> None:
    seen = 0
    for p in parsers:
        for act in _aliases(p):
            new = act.renamed_to  # type: ignore[attr-defined]
            argv = [*_required(p), *act.option_strings[:1], *_value(act, tmp_path)]
            for how in ("flag", "config key"):
                if how == "config key":
                    if not act.option_strings:
                        continue
                    key = act.dest
                    value = True if act.nargs == 0 else _value(act, tmp_path)[0]
                    if value == "3":
                        value = 3  # type: ignore[assignment]
                    cfg = tmp_path / "c.yaml"
                    cfg.write_text(f"{key}: {value}\n")
                    argv = [*_required(p), "--config", str(cfg)]
                try:
                    args = p.parse_args(argv)
                except SystemExit:
                    pytest.fail(f"{p.prog} {argv} refused")
                args = apply_config(p, args, argv)
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    apply_renamed(p, args)
                    apply_renamed(p, args)  # a second pass finds nothing left to move
                msgs = [str(w.message) for w in caught if w.category is DeprecatedOption]
                assert len(msgs) == 1 and msgs[0].endswith(
                    "is deprecated, use --" + new.replace("_", "-")
                ), (p.prog, argv, msgs)
                assert getattr(args, act.dest) is None, (p.prog, argv)
                assert getattr(args, new) == (True if act.nargs == 0 else 3) or (
                    str(getattr(args, new)).endswith("x.json")
                ), (p.prog, argv, getattr(args, new))
                seen += 1
    assert seen >= 14


def test_alias_through_main_one_warning_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "s.parquet"
    argv = ["data", "make-sinusoid", "--out", str(out), "--tasks", "3", "--test-size", "2"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main([*argv, "--force"]) == 0  # replaces it, as --overwrite does
    assert capsys.readouterr().err.splitlines() == [
        "raymeta: warning: --force is deprecated, use --overwrite"
    ]
    assert main(["data", "make-sinusoid", str(out), "--tasks", "3", "--overwrite"]) == 0
    assert capsys.readouterr().err.splitlines() == [
        "raymeta: warning: the positional OUT is deprecated, use --out"
    ]
    # both spellings that disagree: one error line, after the one warning, before any work
    assert main(["tune", "--meta", str(tmp_path), "--population", "3", "--trials", "4"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "raymeta: error: give --trials, not both it and the deprecated --population"
    ]


def test_config_precedence_every_flag_form_and_abbreviation_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """config-file precedence with an abbreviated flag: '--task 30' for '--tasks' is refused
    with one line (it was accepted and then silently overridden by the file)."""
    cfg = tmp_path / "ms.yaml"
    cfg.write_text("tasks: 5\nconfigs: 7\n")
    root = build_parser()
    for form in (["--tasks", "30"], ["--tasks=30"]):
        argv = ["priors", "fit", "--meta", "m", "--config", str(cfg), *form]
        args = root.parse_args(argv)
        args = apply_config(args._parser, args, argv)
        assert (args.tasks, args.configs) == (30, 7), form
    with pytest.raises(SystemExit) as exc:
        main(["priors", "fit", "--meta", str(tmp_path), "--config", str(cfg), "--task", "30"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("raymeta: error:") and "--task" in err[0], err
    # a deprecated spelling on the command line wins over the new name in the file, and back
    cfg.write_text("trials: 5\n")
    tune = root.parse_args(["tune", "--meta", "m"])._parser
    for argv, want in ((["--population", "9"], 9), (["--trials", "9"], 9)):
        full = ["--config", str(cfg), *argv]
        args = apply_config(tune, tune.parse_args(full), full)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecatedOption)
            apply_renamed(tune, args)
        assert args.trials == want, argv


def test_python_dash_m_raymeta() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "raymeta", "--version"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and r.stdout.startswith("raymeta "), (r.stdout, r.stderr)
