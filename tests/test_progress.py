"""Progress lines of long commands: in place on a terminal, a few plain lines otherwise,
nothing with ``--quiet``; ``raymeta priors fit`` end to end on a tiny checkpoint."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest

from raymeta.cli.main import main
from raymeta.progress import Progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_at_each_tenth_and_the_end_when_not_a_terminal() -> None:
    buf = io.StringIO()
    with Progress("work", 1000, stream=buf) as p:
        for done in range(0, 1001):
            p(done, 1000)
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("work: 0/1000 (0%) 0:0")
    assert lines[-1].startswith("work: 1000/1000 (100%)")
    assert len(lines) == 11  # 0%, 10%, ..., 100%: never a line per step
    assert "left" in lines[5]  # an estimate once some work is done


def test_a_terminal_line_is_rewritten_in_place_and_ended() -> None:
    term = _Terminal()
    with Progress("work", 3, stream=term) as p:
        for done in range(4):
            p(done)
    text = term.getvalue()
    assert text.startswith("\rwork: 0/3 (0%)") and text.endswith("\x1b[K\n")
    assert text.count("\n") == 1  # one line, updated in place


def test_quiet_prints_nothing_and_a_closed_stream_fails_nothing() -> None:
    buf = io.StringIO()
    with Progress("work", 10, stream=buf, quiet=True) as p:
        p(5)
        p(10)
    assert buf.getvalue() == ""
    closed = io.StringIO()
    closed.close()
    with Progress("work", 10, stream=closed) as p:
        p(10)  # a broken pipe must not break the work it reports on


def test_priors_fit_progress_on_stderr_and_quiet(
    ckpt_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "c"
    shutil.copytree(ckpt_dir, d)
    args = ["priors", "fit", "--meta", str(d), "--tasks", "2", "--configs", "4"]
    args += ["--max-steps", "4", "--refine-repeats", "1", "--select-tasks", "0"]
    assert main(args) == 0
    got = capsys.readouterr()
    lines = [x for x in got.err.splitlines() if x.startswith("priors fit: fine-tuning runs: ")]
    assert lines[0].startswith("priors fit: fine-tuning runs: 0/16 (0%)")
    assert lines[-1].startswith("priors fit: fine-tuning runs: 16/16 (100%)")  # re-runs counted
    assert "priors fit:" not in got.out and "learned prior" in got.out
    assert main([*args, "--quiet"]) == 0
    got = capsys.readouterr()
    assert "priors fit:" not in got.err and got.err.startswith("wrote ")


def test_meta_train_quiet_drops_its_progress_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["meta-train", "--local", "--family", "sinusoid", "--steps", "4"]
    args += ["--meta-batch", "4", "--val-tasks", "2", "--log-every", "2"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert "step 4/4" in capsys.readouterr().out
    assert main([*args, "--out", str(tmp_path / "b"), "--quiet"]) == 0
    got = capsys.readouterr()
    assert got.out == "" and "step" not in got.err
    assert (tmp_path / "b" / "meta.json").is_file()
