"""``raymeta report``: formats, plots, and one-line errors with exit 2 for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from raymeta.cli.main import main
from raymeta.results import SCHEMA_VERSION, ResultSink
from raymeta.results.synthetic import synthetic_rows

STRATEGIES = ["meta+prior+pbt", "meta+fixed-default", "scratch+broad+pbt", "scratch+broad+random"]


@pytest.fixture
def results(tmp_path: Path) -> Path:
    root = tmp_path / "results"
    sink = ResultSink(root, "demo")
    rows = synthetic_rows(sweep="demo", tasks=("a", "b"), seeds=(0, 1))
    for task in ("a", "b"):  # one part per task, as a sweep would append them
        assert sink.append([r for r in rows if r["task"] == task], key=f"task={task}")
    other = ResultSink(root, "other")
    other.append(synthetic_rows(sweep="other", tasks=("c",), seeds=(0,)), key="all")
    return root


def test_table_default(results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(results), "--sweep", "demo"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:6] == ["strategy", "n", "tasks", "test_loss", "mean", "median"]
    assert [ln.split()[0] for ln in lines[2:6]] == STRATEGIES
    assert lines[2].split()[1:3] == ["4", "2"]  # 4 runs (2 tasks x 2 seeds) over 2 tasks
    at = next(i for i, ln in enumerate(lines) if ln.startswith("win rate (row vs column)"))
    assert lines[at].split()[-4:] == ["[1]", "[2]", "[3]", "[4]"]
    # the synthetic strategies are strictly ordered on every task: upper triangle all won
    assert lines[at + 2].split() == ["[1]", "meta+prior+pbt", "-", "1.00", "1.00", "1.00"]
    assert lines[at + 5].split() == ["[4]", "scratch+broad+random", "0.00", "0.00", "0.00", "-"]


def test_markdown_and_json(results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(results), "--format", "markdown"]) == 0
    md = capsys.readouterr().out.splitlines()
    assert md[0].startswith("| strategy |") and md[1].startswith("|---|")
    assert md[2].startswith("| meta+prior+pbt | 5 |")  # both sweeps: 2 tasks x 2 seeds + 1 x 1
    assert (
        main(["report", str(results), "--sweep", "demo", "--format", "json", "--target", "1.0"])
        == 0
    )
    doc = json.loads(capsys.readouterr().out)
    assert doc["metric"] == "test_loss" and doc["target"] == 1.0
    assert [s["strategy"] for s in doc["strategies"]] == STRATEGIES
    best = doc["strategies"][0]
    assert best["rank"] == 1.0 and best["regret"] == 0.0 and best["reached"] == best["runs"] == 4
    assert best["ci_low"] < best["mean"] < best["ci_high"]
    assert best["tasks"] == 2 and best["seeds"] == 2 and best["seed_invariant"] is False
    assert best["median"] == pytest.approx(best["mean"])  # the median of two tasks is their mean
    assert len(doc["win_rates"]) == 12 and doc["notes"] == []
    pair = next(w for w in doc["win_rates"] if (w["a"], w["b"]) == (STRATEGIES[0], STRATEGIES[1]))
    assert (pair["wins"], pair["losses"], pair["ties"], pair["rate"]) == (2, 0, 0, 1.0)


def test_identical_seeds_are_noted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from raymeta.results import report

    rows = synthetic_rows(sweep="demo", tasks=("a", "b", "c"), seeds=(0, 1))
    for r in rows:  # a fixed default: the final value does not depend on the seed
        if r["strategy"] == "meta+fixed-default" and r["metric"] == "test_loss":
            r["value"] = {"a": 0.3, "b": 0.45, "c": 0.6}[r["task"]]
    ResultSink(tmp_path / "results", "demo").append(rows, key="all")
    rep = report(tmp_path / "results")
    fixed = next(r for r in rep.rows if r["strategy"] == "meta+fixed-default")
    assert fixed["seed_invariant"] is True and fixed["mean"] == pytest.approx(0.45)
    assert rep.notes == [
        "meta+fixed-default: seeds are identical by construction (each task gave exactly the "
        "same value on every seed); its CI counts 3 tasks, not 6 runs"
    ]
    assert rep.wins[("meta+prior+pbt", "meta+fixed-default")]["tasks"] == 3
    assert main(["report", str(tmp_path / "results")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "note: " + rep.notes[0]


def test_plots_and_config_file(
    results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "report.yaml"
    cfg.write_text(f"sweep: demo\nformat: json\nplots: {tmp_path / 'png'}\n")
    assert main(["report", str(results), "--config", str(cfg)]) == 0
    captured = capsys.readouterr()
    json.loads(captured.out)  # stdout stays pure JSON; plot paths go to stderr
    pngs = sorted(p.name for p in (tmp_path / "png").glob("*.png"))
    assert pngs == [
        "best_val_loss_vs_member_steps.png",
        "best_val_loss_vs_wall_time.png",
        "rank_vs_budget_val_loss.png",
    ]
    assert "wrote" in captured.err


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("raymeta: error: ") and "\n" not in err
    return err


def test_bad_inputs_are_one_line_errors(
    results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "does not exist" in _error(["report", str(tmp_path / "nope")], capsys)
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "x.parquet").write_bytes(b"")
    assert "not a raymeta results dataset" in _error(["report", str(tmp_path / "plain")], capsys)
    old = tmp_path / "old"
    old.mkdir()
    (old / "_schema.json").write_text(
        json.dumps({"schema_version": SCHEMA_VERSION + 1, "columns": []})
    )
    assert "schema version" in _error(["report", str(old)], capsys)
    ResultSink(tmp_path / "empty", "s").append([], key="nothing")  # a dataset with no rows
    assert "no rows" in _error(["report", str(tmp_path / "empty")], capsys)
    assert "not found" in _error(["report", str(results), "--sweep", "missing"], capsys)
    assert "available" in _error(["report", str(results), "--metric", "test_accuracy"], capsys)


def test_console_script(results: Path) -> None:
    exe = Path(sys.executable).with_name("raymeta")
    ok = subprocess.run(
        [str(exe), "report", str(results), "--sweep", "other"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0 and ok.stdout.splitlines()[0].startswith("strategy")
    bad = subprocess.run(
        [str(exe), "report", str(results / "sweep=demo")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        bad.returncode == 2
        and bad.stderr.count("\n") == 1
        and "not a raymeta results dataset" in bad.stderr
    )


def test_help_renders(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:  # argparse %-formats help strings: a stray '%' breaks it
        main(["report", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--format {table,markdown,json}" in out and "--plots DIR" in out
