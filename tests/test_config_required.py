"""Required options may come from ``--config FILE.yaml`` (README "Command line": every flag can),
and the report / Parquet-reading quirks found beside them.

Every case runs the real CLI in-process through ``main(argv)``: a value given only in the YAML
now works end to end (``predict``, ``data convert``; ``sweep --out`` and ``bench fewshot
--suite`` get past the required check to their own input checks), and a required option given
nowhere is one ``raymeta: error:`` line, exit 2, naming it and saying it can come from
--config, before any work. ``--help`` still shows these options as required.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _tune_run import write_tune_run  # tests/ is on sys.path
from test_bad_inputs import run_cli

from raymeta.cli._common import AFTER_CONFIG
from raymeta.cli.bench import BENCHES, bench_parser
from raymeta.cli.main import build_parser
from raymeta.core.models import ModelSpec

FROM_CONFIG = "(give {} on the command line or in --config FILE.yaml)"


def _yaml(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# ---------------------------------------------------------------- fixtures built here

MLP = ModelSpec("mlp", (3,), 1, {"widths": [8]})


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    """A tune run directory as ``raymeta tune`` writes it (report.json + best_model.pt)."""
    return write_tune_run(tmp_path / "run", MLP)


def _plain_table(rows: int = 40, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 3)).astype(np.float32)
    return pa.table({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": x.sum(1)})


@pytest.fixture()
def plain(tmp_path: Path) -> Path:
    """A plain table: numeric columns a, b, c and a float target y."""
    path = tmp_path / "plain.parquet"
    pq.write_table(_plain_table(), path)
    return path


# ---------------------------------------------------------------- YAML-only values work


def test_predict_run_input_out_from_config_only(
    tmp_path: Path, run_dir: Path, plain: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    by_flags = tmp_path / "flags.parquet"
    argv = ["predict", "--run", str(run_dir), "--input", str(plain), "--out", str(by_flags)]
    assert run_cli([*argv, "--feature-columns", "a,b,c"], capsys) == (0, [])
    out = tmp_path / "yaml.parquet"
    cfg = _yaml(
        tmp_path / "p.yaml",
        f"run: {run_dir}\ninput: {plain}\nout: {out}\nfeature_columns: a,b,c\n",
    )
    assert run_cli(["predict", "--config", cfg], capsys) == (0, [])
    assert pq.read_table(out).equals(pq.read_table(by_flags))
    # a flag wins over the file for a required option too (the file's --out is left alone)
    other = tmp_path / "flag_wins.parquet"
    assert run_cli(["predict", "--config", cfg, "--out", str(other), "--overwrite"], capsys) == (
        0,
        [],
    )
    assert pq.read_table(other).equals(pq.read_table(by_flags))


def test_data_convert_every_required_option_from_config_only(
    tmp_path: Path, plain: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    by_flags = tmp_path / "flags.parquet"
    argv = ["data", "convert", "--input", str(plain), "--out", str(by_flags)]
    assert run_cli([*argv, "--feature-columns", "a,b,c", "--target-column", "y"], capsys)[0] == 0
    want = pq.read_table(by_flags)
    # feature_columns as the flag's text and as a YAML list (column_names takes both)
    for i, cols in enumerate(("a,b,c", "[a, b, c]")):
        out = tmp_path / f"yaml{i}.parquet"
        cfg = _yaml(
            tmp_path / f"c{i}.yaml",
            f"input: {plain}\nout: {out}\nfeature_columns: {cols}\ntarget-column: y\n",
        )
        rc, err = run_cli(["data", "convert", "--config", cfg], capsys)
        assert (rc, err) == (0, []), cols
        assert pq.read_table(out).equals(want), cols
    # the written task set is valid task data
    assert (
        run_cli(["data", "validate", str(tmp_path / "yaml1.parquet"), "--one-task"], capsys)[0] == 0
    )


def test_config_list_of_feature_columns_is_checked(
    tmp_path: Path, plain: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "o.parquet"
    base = f"input: {plain}\nout: {out}\ntarget_column: y\n"
    for cols, why in (
        ("[a, 3]", "'feature_columns' must be a list of column names, got ['a', 3] (list)"),
        ("[a, '']", "'feature_columns': expected column names A,B,C, got ['a', '']"),
        ("[]", "'feature_columns': expected column names A,B,C, got []"),
    ):
        cfg = _yaml(tmp_path / "c.yaml", base + f"feature_columns: {cols}\n")
        assert run_cli(["data", "convert", "--config", cfg], capsys) == (
            2,
            [f"raymeta: error: config file {cfg}: {why}"],
        )
        assert not out.exists()


def test_sweep_out_and_bench_suite_from_config_reach_their_own_checks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No Ray, no benchmark: the YAML-only value passes the required check and the command
    goes on to refuse a later input (so the value was taken)."""
    sweep = _yaml(tmp_path / "s.yaml", "name: x\n")
    out = tmp_path / "res"
    cfg = _yaml(tmp_path / "so.yaml", f"out: {out}\n")
    rc, err = run_cli(["sweep", sweep, "--config", cfg], capsys)
    assert rc == 2 and len(err) == 1 and "--out" not in err[0], err
    assert err[0].startswith("raymeta: error: sweep: 'meta'"), err
    assert not out.exists()
    cfg = _yaml(tmp_path / "b.yaml", "suite: nope\n")
    assert run_cli(["bench", "fewshot", "--config", cfg], capsys) == (
        2,
        ["raymeta: error: unknown suite 'nope' (choose from omniglot, sinusoid, digits)"],
    )


# ---------------------------------------------------------------- given nowhere: one line


@pytest.mark.parametrize(
    ("argv", "where", "missing"),
    [
        (["predict"], "predict", "--run, --input and --out are"),
        (["predict", "--run", "r", "--out", "o.parquet"], "predict", "--input is"),
        (
            ["data", "convert"],
            "data convert",
            "--input, --out, --feature-columns and --target-column are",
        ),
        (
            ["data", "convert", "--input", "t", "--out", "o.parquet", "--feature-columns", "a"],
            "data convert",
            "--target-column is",
        ),
        (["sweep", "s.yaml"], "sweep", "--out is"),
        (["bench", "fewshot", "--budget", "smoke"], "bench fewshot", "--suite is"),
    ],
)
def test_missing_required_option_is_one_line_before_any_work(
    argv: list[str],
    where: str,
    missing: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)  # relative paths: nothing may appear here
    them = "it" if missing.endswith(" is") else "them"
    want = f"raymeta: error: {where}: {missing} required {FROM_CONFIG.format(them)}"
    assert run_cli(argv, capsys) == (2, [want])
    # the same through a config file that gives other options only
    cfg = _yaml(tmp_path / "other.yaml", "overwrite: true\n" if argv[0] != "bench" else "seed: 1\n")
    if argv[0] == "sweep":
        cfg = _yaml(tmp_path / "other.yaml", "quiet: true\n")
    assert run_cli([*argv, "--config", cfg], capsys) == (2, [want])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.yaml"]


def test_a_null_in_the_config_does_not_count_as_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _yaml(tmp_path / "n.yaml", "run: null\ninput: x.parquet\nout: o.parquet\n")
    assert run_cli(["predict", "--config", cfg], capsys) == (
        2,
        [f"raymeta: error: predict: --run is required {FROM_CONFIG.format('it')}"],
    )


# ---------------------------------------------------------------- --help still says required


def _walk(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for act in parser._actions:
        if isinstance(act, argparse._SubParsersAction):
            for sub in dict.fromkeys(act.choices.values()):
                yield from _walk(sub)


def test_no_option_is_left_to_argparse_and_help_shows_the_required_ones() -> None:
    parsers = [*_walk(build_parser()), *(bench_parser(w) for w in BENCHES)]
    deferred: dict[str, list[str]] = {}
    for p in parsers:
        for act in p._actions:
            if not act.option_strings:
                continue
            # argparse's required=True would refuse a value that only --config gives
            assert not act.required, (p.prog, act.option_strings)
            if getattr(act, AFTER_CONFIG, False):
                deferred.setdefault(p.prog, []).append(act.option_strings[-1])
    assert deferred == {
        "raymeta meta-train": ["--out"],
        "raymeta priors fit": ["--meta"],
        "raymeta priors show": ["--meta"],
        "raymeta tune": ["--meta", "--task", "--trials", "--out"],
        "raymeta predict": ["--run", "--input", "--out"],
        "raymeta data convert": ["--input", "--out", "--feature-columns", "--target-column"],
        "raymeta data make-sinusoid": ["--out"],
        "raymeta sweep": ["--out"],
        "raymeta bench fewshot": ["--suite"],
    }
    by_prog = {p.prog: p for p in parsers}
    for prog, flags in deferred.items():
        p = by_prog[prog]
        usage = " ".join(p.format_usage().split())
        text = p.format_help().split("\noptions:\n", 1)[1]
        for flag in flags:
            act = p._option_string_actions[flag]
            metavar = act.metavar or act.dest.upper()
            assert f" {flag} {metavar}" in usage and f"[{flag} " not in usage, (prog, usage)
            line = " ".join(text.split(f"  {flag} ", 1)[1].split("\n  -", 1)[0].split())
            assert line.endswith("(required)"), (prog, flag, line)
        assert not any(p._option_string_actions[f].required for f in flags)  # reset after help


# ---------------------------------------------------------------- report: malformed sweep folders


@pytest.fixture()
def results(tmp_path: Path) -> Path:
    from raymeta.results import ResultSink
    from raymeta.results.synthetic import synthetic_rows

    res = tmp_path / "results"
    ResultSink(res, "demo").append(synthetic_rows(sweep="demo", tasks=("a",), seeds=(0,)), "all")
    return res


@pytest.mark.parametrize(
    ("folder", "what"), [("sweep=", "an empty sweep name"), ("sweep=a b", "the sweep name 'a b'")]
)
def test_report_refuses_a_sweep_folder_with_a_bad_name(
    results: Path, folder: str, what: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``sweep=`` was read as a sweep named '' (a ``/strategy`` row group no --sweep could
    select); refused in one line like the dataset's other malformed contents (an unreadable
    part, a foreign schema version), whether or not it holds parts."""
    import shutil

    from raymeta.errors import DataError
    from raymeta.results import list_sweeps

    assert run_cli(["report", str(results)], capsys)[0] == 0
    bad = results / folder
    shutil.copytree(results / "sweep=demo", bad)
    want = (
        f"raymeta: error: results dataset {results}: folder {folder!r} has {what}; a sweep "
        "folder is sweep=NAME, NAME 1-128 letters, digits, '_', '.', '+', '-' starting with a "
        "letter or digit (rename or remove the folder)"
    )
    for paths in ([results], [results / "sweep=demo"], [bad], [results.parent]):
        assert run_cli(["report", *map(str, paths)], capsys) == (2, [want]), paths
    assert run_cli(["report", str(results), "--sweep", "demo"], capsys) == (2, [want])
    for p in bad.iterdir():
        p.unlink()
    assert run_cli(["report", str(results)], capsys) == (2, [want])  # empty: refused all the same
    with pytest.raises(DataError, match="rename or remove the folder"):
        list_sweeps(results)
    bad.rmdir()
    assert list_sweeps(results) == ["demo"]
    assert run_cli(["report", str(results)], capsys)[0] == 0


# ---------------------------------------------------------------- a file lacking a named column


@pytest.fixture()
def parts(tmp_path: Path) -> Path:
    """A directory input of two files; the second lacks column b."""
    d = tmp_path / "parts"
    d.mkdir()
    t = _plain_table()
    pq.write_table(t, d / "part-0.parquet")
    pq.write_table(t.drop_columns(["b"]), d / "part-1.parquet")
    return d


def test_convert_names_the_file_missing_a_feature_or_target_column(
    tmp_path: Path, parts: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was: "feature column 'b' has null values" (pyarrow reads the missing column as nulls)."""
    out = tmp_path / "o.parquet"
    argv = ["data", "convert", "--input", str(parts), "--out", str(out), "--target-column", "y"]
    assert run_cli([*argv, "--feature-columns", "a,b,c"], capsys) == (
        2,
        [
            f"raymeta: error: {parts}: file {parts / 'part-1.parquet'} has no feature column 'b' "
            "(the file has a, c, y)"
        ],
    )
    assert not out.exists()
    pq.write_table(_plain_table().drop_columns(["y"]), parts / "part-1.parquet")
    assert run_cli([*argv, "--feature-columns", "a,b,c"], capsys) == (
        2,
        [
            f"raymeta: error: {parts}: file {parts / 'part-1.parquet'} has no target column 'y' "
            "(the file has a, b, c)"
        ],
    )
    pq.write_table(_plain_table(seed=1), parts / "part-1.parquet")  # both complete: converts
    assert run_cli([*argv, "--feature-columns", "a,b,c"], capsys)[0] == 0
    assert pq.read_metadata(out).num_rows == 80


def test_predict_names_the_file_missing_a_feature_column(
    tmp_path: Path, run_dir: Path, parts: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "p.parquet"
    argv = ["predict", "--run", str(run_dir), "--input", str(parts), "--out", str(out)]
    assert run_cli([*argv, "--feature-columns", "a,b,c"], capsys) == (
        2,
        [
            f"raymeta: error: {parts}: file {parts / 'part-1.parquet'} has no feature column 'b' "
            "(the file has a, c, y)"
        ],
    )
    assert not out.exists()
    # the task schema's features column, missing from one file of a directory
    feats = tmp_path / "feats"
    feats.mkdir()
    x = np.zeros((4, 3), np.float32)
    col = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 3)
    pq.write_table(pa.table({"features": col, "id": np.arange(4)}), feats / "a.parquet")
    pq.write_table(pa.table({"id": np.arange(4)}), feats / "b.parquet")
    argv = ["predict", "--run", str(run_dir), "--input", str(feats), "--out", str(out)]
    assert run_cli(argv, capsys) == (
        2,
        [
            f"raymeta: error: {feats}: file {feats / 'b.parquet'} has no feature column "
            "'features' (the file has id)"
        ],
    )
    assert not out.exists()
