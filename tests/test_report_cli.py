"""``raymeta report``: formats, plots, one-line errors with exit 2 for bad input, and reports
over anything raymeta wrote (tune run directories, folders of them, globs, sweep datasets),
grouped by sweep unless pooled."""

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
FEW_NOTE = (
    "every group has fewer than 5 tasks; a bootstrap CI over so few understates the "
    "uncertainty (read it as the spread of the task means)"
)


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
    assert main(["report", str(results), "--format", "markdown", "--pool"]) == 0
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
    assert best["ci_kind"] == "bootstrap" and "bootstrap" in doc["interval"]
    assert len(doc["win_rates"]) == 12 and doc["notes"] == [FEW_NOTE]
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
        "same value on every seed); its CI counts 3 tasks, not 6 runs",
        FEW_NOTE,
    ]
    assert rep.wins[("meta+prior+pbt", "meta+fixed-default")]["tasks"] == 3
    assert main(["report", str(tmp_path / "results")]) == 0
    assert capsys.readouterr().out.splitlines()[-2] == "note: " + rep.notes[0]


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
    err = _error(["report", str(results), str(tmp_path / "plain")], capsys)
    assert f"no raymeta results under {tmp_path / 'plain'} " in err  # names the empty one
    assert "matches" in _error(["report", str(tmp_path / "ru*s")], capsys)
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
    folder = subprocess.run(  # a sweep folder: that sweep of its dataset
        [str(exe), "report", str(results / "sweep=demo")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert folder.returncode == 0 and "; sweeps demo (grouped by sweep)" in folder.stdout
    (results.parent / "nothing").mkdir()
    bad = subprocess.run(
        [str(exe), "report", str(results.parent / "nothing")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        bad.returncode == 2 and bad.stderr.count("\n") == 1 and "no raymeta results" in bad.stderr
    )


def test_help_renders(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:  # argparse %-formats help strings: a stray '%' breaks it
        main(["report", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--format {table,markdown,json}" in out and "--plots DIR" in out


# ------------------------------------------- reports over tune run directories (issue 16 item 3)


def _tune_run_dir(
    out: Path,
    label: str,
    task: str,
    strategy: str,
    seed: int,
    final: float,
    *,
    accuracy: bool = False,
) -> Path:
    """A run directory laid out the way ``raymeta tune`` writes one (see
    ``orchestration/tune/run.write_outputs``): ``results/`` appended through the real
    ``ResultSink`` with the real row builders and keys, plus ``report.json``; no Ray run."""
    from raymeta.fileio import atomic_write_json
    from raymeta.finetune.curves import final_rows, val_rows

    sink = ResultSink(out / "results", label)
    common = {"sweep": label, "strategy": strategy, "task": task, "seed": seed}
    key = f"{task}/{strategy}/{seed}"
    for t, trial in enumerate(("t0", "t1")):
        rows = []
        for i, spent in enumerate((5, 10, 15, 20)):
            loss = final * (1.0 + (3 - i) * 0.5 + t * 0.1)
            metrics = {"val_loss": loss, **({"val_accuracy": 1 / (1 + loss)} if accuracy else {})}
            rows += val_rows(common, trial, spent, metrics, {"lr": 0.01}, 0.5 * spent + t)
        sink.append(rows, key=f"{key}/{trial}")
    test = {"test_loss": final, **({"test_accuracy": 1 / (1 + final)} if accuracy else {})}
    sink.append(final_rows(common, "t0/m0", 40, test, {"lr": 0.01}, 21.0), key=f"{key}/final")
    atomic_write_json(
        out / "report.json",
        {"task": task, "strategy": strategy, "best": test, "files": {"results": "results"}},
    )
    return out


@pytest.fixture
def tune_runs(tmp_path: Path) -> Path:
    """Three tasks x two strategies, one tune run each, all labelled ``q`` (``--name q``)."""
    tune = tmp_path / "tune"
    for i in range(3):
        for strategy, final in (("meta+learned+pbt", 0.1 + i), ("scratch+broad+pbt", 2.0 + 3 * i)):
            _tune_run_dir(tune / f"task{i}-{strategy}", "q", f"sinusoid:{i}", strategy, i, final)
    return tune


def test_three_tune_run_dirs_give_one_table(
    tune_runs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(tune_runs)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[:3] for ln in lines[2:4]] == [
        ["meta+learned+pbt", "3", "3"],
        ["scratch+broad+pbt", "3", "3"],
    ]
    assert "95% CI (bootstrap)" in lines[0]
    assert any("2000 resamples, seeded" in ln for ln in lines)  # the footer names the interval
    # the same table from the run directories named one by one, and from a quoted glob
    runs = sorted(str(p) for p in tune_runs.iterdir())
    assert main(["report", *runs]) == 0
    assert capsys.readouterr().out.splitlines()[:4] == lines[:4]
    assert main(["report", str(tune_runs / "task*-meta*")]) == 0
    only = capsys.readouterr().out.splitlines()
    assert only[2].split()[:3] == ["meta+learned+pbt", "3", "3"] and only[3] == ""


def test_grouped_by_sweep_unless_pooled(tune_runs: Path) -> None:
    from raymeta.results import report

    # a second label runs the meta strategy on a task the first one also ran, with more budget
    _tune_run_dir(tune_runs / "big-0", "q2", "sinusoid:0", "meta+learned+pbt", 0, 0.05)
    rep = report(tune_runs)
    got = {d["strategy"]: (d["sweep"], d["tasks"]) for d in rep.rows}
    assert got == {
        "q/meta+learned+pbt": ("q", 3),
        "q/scratch+broad+pbt": ("q", 3),
        "q2/meta+learned+pbt": ("q2", 1),
    }
    assert rep.text.splitlines()[0].startswith("sweep/strategy")
    # grouped, equal task names are one task: q2 beat both q strategies on sinusoid:0
    assert rep.wins[("q2/meta+learned+pbt", "q/meta+learned+pbt")]["tasks"] == 1
    assert rep.rows[0]["strategy"] == "q2/meta+learned+pbt"
    pooled = report(tune_runs, pool=True)
    got = {d["strategy"]: (d["sweep"], d["n"], d["tasks"]) for d in pooled.rows}
    assert got == {"meta+learned+pbt": (None, 4, 4), "scratch+broad+pbt": ("q", 3, 3)}
    assert "(pooled)" in pooled.text
    only = report(tune_runs, sweep="q2")
    assert [d["strategy"] for d in only.rows] == ["meta+learned+pbt"]


def test_accuracy_metric_plots_accuracy_and_its_interval_stays_in_0_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from matplotlib.image import imread

    tune = tmp_path / "tune"
    for i, final in enumerate((0.01, 0.02, 0.05, 9.0)):  # one task the model failed on
        for strategy, scale in (("meta+learned+pbt", 1.0), ("scratch+broad+pbt", 3.0)):
            d = tune / f"task{i}-{strategy}"
            _tune_run_dir(d, "c", f"omniglot:{i}", strategy, 0, final * scale, accuracy=True)
    png = tmp_path / "png"
    argv = ["report", str(tune), "--metric", "test_accuracy", "--plots", str(png)]
    argv += ["--format", "json"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["metric"] == "test_accuracy"
    assert [s["strategy"] for s in doc["strategies"]] == ["meta+learned+pbt", "scratch+broad+pbt"]
    for s in doc["strategies"]:
        assert 0.0 <= s["ci_low"] < s["mean"] < s["ci_high"] <= 1.0
    names = sorted(p.name for p in png.glob("*.png"))
    assert names == [
        "best_val_accuracy_vs_member_steps.png",
        "best_val_accuracy_vs_wall_time.png",
        "rank_vs_budget_val_accuracy.png",
    ]
    assert float(imread(png / names[0])[..., :3].std()) > 0.05
    # loss of the same runs: heavy tailed (the failed task), the interval stays >= 0
    from raymeta.results import report

    rep = report(tune, metric="test_loss")
    meta = rep.rows[0]
    assert meta["ci_kind"] == "bootstrap" and 0.0 < meta["ci_low"] < meta["mean"]
