"""Aggregation checked against hand-computed values and scipy as an independent reference."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from raymeta.errors import DataError
from raymeta.results import SCHEMA, make_plots, make_row, summarise
from raymeta.results.curves import run_curves, validation_metric
from raymeta.results.render import render
from raymeta.results.schema import rows_to_table
from raymeta.results.summary import bootstrap_ci, mean_ci95, notes, t_quantile, win_rates
from raymeta.results.synthetic import synthetic_rows


def _final(strategy: str, task: str, seed: int, value: float, metric: str = "test_loss") -> dict:
    return make_row(
        sweep="s",
        strategy=strategy,
        task=task,
        seed=seed,
        trial="best",
        step=100,
        metric=metric,
        value=value,
        hparams={},
        wall_s=1.0,
    )


def _val(
    strategy: str, task: str, seed: int, trial: str, step: int, wall: float, value: float
) -> dict:
    return make_row(
        sweep="s",
        strategy=strategy,
        task=task,
        seed=seed,
        trial=trial,
        step=step,
        metric="val_loss",
        value=value,
        hparams={},
        wall_s=wall,
    )


def test_t_quantile_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for df in [1, 2, 3, 4, 5, 7, 10, 19, 30, 41, 120]:
        for p in (0.9, 0.975, 0.995):
            assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9)


def test_mean_ci95_hand_computed() -> None:
    # values 1,2,3,4: mean 2.5, sd sqrt(5/3), se sqrt(5/3)/2, t(0.975, 3) = 3.182446305284263
    mean, half = mean_ci95([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert half == pytest.approx(3.182446305284263 * math.sqrt(5 / 3) / 2, rel=1e-10)
    assert half == pytest.approx(2.054260, abs=1e-6)
    m1, h1 = mean_ci95([7.0])
    assert m1 == 7.0 and math.isnan(h1)


def test_bootstrap_ci_respects_the_metric_range_and_is_seeded() -> None:
    rng = np.random.default_rng(3)
    losses = np.concatenate([rng.lognormal(-3, 0.5, 18), [40.0, 65.0]])  # heavy tailed MSEs
    low, high = bootstrap_ci(losses)
    m, half = mean_ci95(losses)
    assert m - half < 0  # the Student-t interval claims a negative mean MSE is plausible
    assert 0 < losses.min() <= low < m < high <= losses.max()
    assert bootstrap_ci(losses) == (low, high)  # seeded: a report is reproducible
    acc = np.array([1.0] * 9 + [0.55])  # accuracies near the top of [0, 1]
    a_low, a_high = bootstrap_ci(acc)
    assert 0.0 <= a_low < acc.mean() < a_high <= 1.0
    assert mean_ci95(acc)[0] + mean_ci95(acc)[1] > 1.0  # t would go above 1
    assert all(math.isnan(x) for x in bootstrap_ci([0.3])) and bootstrap_ci([2.0, 2.0]) == (
        2.0,
        2.0,
    )


def test_regret_and_rank_on_tiny_table() -> None:
    rows = [
        # task A: x=1 (seeds 0.5 and 1.5), y=2, z=3 -> regret 0, 0.5, 1; ranks 1, 2, 3
        _final("x", "A", 0, 0.5),
        _final("x", "A", 1, 1.5),
        _final("y", "A", 0, 2.0),
        _final("y", "A", 1, 2.0),
        _final("z", "A", 0, 3.0),
        _final("z", "A", 1, 3.0),
        # task B: x=10, y=10, z=30 -> regret 0, 0, 1; ranks 1.5, 1.5, 3 (tie)
        _final("x", "B", 0, 10.0),
        _final("y", "B", 0, 10.0),
        _final("z", "B", 0, 30.0),
    ]
    out = {d["strategy"]: d for d in summarise(rows_to_table(rows))}
    assert [d["strategy"] for d in summarise(rows_to_table(rows))] == ["x", "y", "z"]
    assert out["x"]["regret"] == pytest.approx(0.0) and out["x"]["rank"] == pytest.approx(1.25)
    assert out["y"]["regret"] == pytest.approx(0.25) and out["y"]["rank"] == pytest.approx(1.75)
    assert out["z"]["regret"] == pytest.approx(1.0) and out["z"]["rank"] == pytest.approx(3.0)
    assert out["x"]["n"] == 3 and out["x"]["tasks"] == 2 and out["x"]["seeds"] == 2
    # the task is the unit: A's seeds (0.5, 1.5) average to 1.0 first, then mean over tasks
    assert out["x"]["mean"] == pytest.approx(5.5) and out["x"]["median"] == pytest.approx(5.5)
    # bootstrap of two task means (1, 10): resampled means 1, 5.5, 10 with chance 1/4, 1/2,
    # 1/4, so the 2.5% and 97.5% quantiles are the two values themselves
    assert (out["x"]["ci_low"], out["x"]["ci_high"], out["x"]["ci_kind"]) == (
        1.0,
        10.0,
        "bootstrap",
    )
    # y and z gave the same value on both seeds of A, the only task with two seeds
    assert [out[k]["seed_invariant"] for k in "xyz"] == [False, True, True]


def test_accuracy_is_maximised_and_divergence_is_worst() -> None:
    rows = [
        _final("x", "A", 0, 0.9, "test_accuracy"),
        _final("y", "A", 0, 0.5, "test_accuracy"),
        _final("z", "A", 0, 0.7, "test_accuracy"),
    ]
    out = {d["strategy"]: d for d in summarise(rows_to_table(rows), metric="test_accuracy")}
    assert out["x"]["rank"] == 1 and out["x"]["regret"] == 0
    assert out["y"]["rank"] == 3 and out["y"]["regret"] == 1
    assert out["z"]["regret"] == pytest.approx(0.5)
    rows = [
        _final("x", "A", 0, 1.0),
        _final("y", "A", 0, float("nan")),
        _final("z", "A", 0, 2.0),
        _final("y", "A", 1, 0.1),
    ]
    out = {d["strategy"]: d for d in summarise(rows_to_table(rows))}
    assert out["y"]["failed"] == 1 and out["y"]["n"] == 2 and out["y"]["mean"] == pytest.approx(0.1)
    assert (
        out["y"]["rank"] == 3 and out["y"]["regret"] == 1.0
    )  # a diverged seed makes the task mean inf


def test_identical_seeds_count_once_and_ci_is_over_tasks() -> None:
    task_vals = {"A": 1.0, "B": 2.0, "C": 10.0}  # the fixed strategy: same value on every seed
    rows = [_final("fixed", t, seed, v) for t, v in task_vals.items() for seed in (0, 1, 2)]
    noisy = {("A", 0): 0.5, ("A", 1): 0.7, ("A", 2): 0.9, ("B", 0): 1.0, ("B", 1): 3.0}
    rows += [_final("noisy", t, seed, v) for (t, seed), v in noisy.items()]
    rows += [_final("noisy", "C", 0, 4.0), _final("single", "A", 0, 1.0)]
    rows += [_final("single", "B", 0, 1.0)]  # one seed per task: nothing to tell
    out = {d["strategy"]: d for d in summarise(rows_to_table(rows))}
    fixed = out["fixed"]
    assert (fixed["n"], fixed["tasks"], fixed["seeds"]) == (9, 3, 3)
    assert fixed["seed_invariant"] is True
    assert out["noisy"]["seed_invariant"] is False and out["single"]["seed_invariant"] is False
    t = np.array([1.0, 2.0, 10.0])
    t_975_df2 = 4.302652729749462  # scipy.stats.t.ppf(0.975, 2)
    assert fixed["mean"] == pytest.approx(t.mean()) and fixed["median"] == 2.0
    assert (fixed["ci_low"], fixed["ci_high"]) == bootstrap_ci(t)
    # counting the 9 identical runs as samples would have given a far narrower interval
    wide, narrow = np.diff(bootstrap_ci(t))[0], np.diff(bootstrap_ci(np.repeat(t, 3)))[0]
    assert wide > 1.4 * narrow
    # the Student-t interval (kept for benchmarks) would reach below 0 for these losses
    assert t.mean() - t_975_df2 * t.std(ddof=1) / np.sqrt(3) < 0 < fixed["ci_low"]
    per_task = np.array([0.7, 2.0, 4.0])  # noisy: seeds averaged per task first
    assert out["noisy"]["mean"] == pytest.approx(per_task.mean())
    assert out["noisy"]["median"] == pytest.approx(2.0) and out["noisy"]["n"] == 6
    said = notes(list(out.values()), {})
    assert said == [
        "fixed: seeds are identical by construction (each task gave exactly the same value on "
        "every seed); its CI counts 3 tasks, not 9 runs",
        "every group has fewer than 5 tasks; a bootstrap CI over so few understates the "
        "uncertainty (read it as the spread of the task means)",
    ]


def _pair_table(a: list[float], b: list[float], metric: str = "test_loss") -> pa.Table:
    """Strategies a and b on tasks t0..; two seeds each, offset by +-0.25 so the seed mean is the
    given value."""
    rows = []
    for name, vals in (("a", a), ("b", b)):
        for i, v in enumerate(vals):
            rows += [_final(name, f"t{i:02d}", 0, v - 0.25, metric)]
            rows += [_final(name, f"t{i:02d}", 1, v + 0.25, metric)]
    return rows_to_table(rows)


def test_win_rates_with_ties_and_orientation() -> None:
    a, b = [1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 1.0, 5.0]  # a wins t0 and t3, ties t1, loses t2
    wins = win_rates(_pair_table(a, b))
    assert set(wins) == {("a", "b"), ("b", "a")}
    ab, ba = wins[("a", "b")], wins[("b", "a")]
    assert (ab["wins"], ab["losses"], ab["ties"], ab["tasks"]) == (2, 1, 1, 4)
    assert (ba["wins"], ba["losses"], ba["ties"]) == (1, 2, 1)
    assert ab["rate"] == pytest.approx((2 + 0.5) / 4) and ba["rate"] == pytest.approx(1.5 / 4)
    d = np.array(a) - np.array(b)
    assert ab["mean_diff"] == pytest.approx(d.mean()) and ba["mean_diff"] == pytest.approx(
        -d.mean()
    )
    assert ab["median_diff"] == pytest.approx(np.median(d))
    assert ab["driven_by_few"] is False and ab["few"] == 1  # 4 tasks: leave out 1, fewer than half
    # accuracies: higher is better, differences stay a minus b in metric units
    acc = win_rates(_pair_table(a, b, "test_accuracy"), metric="test_accuracy")[("a", "b")]
    assert (acc["wins"], acc["losses"], acc["ties"]) == (1, 2, 1)
    assert acc["mean_diff"] == pytest.approx(d.mean())
    # a diverged seed loses the task; its difference is left out of the mean
    rows = [_final("a", "t0", 0, float("nan")), _final("a", "t0", 1, 1.0)]
    rows += [_final("b", "t0", 0, 5.0), _final("a", "t1", 0, 1.0), _final("b", "t1", 0, 3.0)]
    rows += [_final("c", "t9", 0, 1.0)]  # shares no task with a or b: no pair
    w = win_rates(rows_to_table(rows))
    assert (w[("a", "b")]["wins"], w[("a", "b")]["losses"]) == (1, 1)
    assert w[("a", "b")]["mean_diff"] == pytest.approx(-2.0) and w[("a", "b")]["diff_tasks"] == 1
    assert ("a", "c") not in w and ("c", "b") not in w
    with pytest.raises(DataError, match="available"):
        win_rates(rows_to_table(rows), metric="test_accuracy")


def test_driven_by_few_outlier_vs_consistent() -> None:
    b = [1.0 + 0.1 * i for i in range(10)]
    outlier = [v - 0.05 for v in b]  # a better by 0.05 on 9 tasks ...
    outlier[7] = b[7] + 1.0  # ... and far worse on one: the mean says a is worse
    wins = win_rates(_pair_table(outlier, b))
    ab = wins[("a", "b")]
    d = np.array(outlier) - np.array(b)
    assert ab["mean_diff"] == pytest.approx(d.mean()) and d.mean() > 0
    rest = d[np.argsort(np.abs(d))[:-2]]  # without the 2 largest |differences|
    assert rest.mean() < 0  # the sign flips
    assert ab["driven_by_few"] is True and wins[("b", "a")]["driven_by_few"] is True
    assert ab["few"] == 2 and ab["rate"] == pytest.approx(0.9)
    assert ab["median_diff"] == pytest.approx(np.median(d))
    summary = summarise(_pair_table(outlier, b))
    assert [r["strategy"] for r in summary] == ["a", "b"]  # a ranks first (wins 9 of 10)
    assert notes(summary, wins) == [
        f"a vs b: mean difference {d.mean():+.3g} is driven by 2 of 10 tasks "
        f"(median difference {np.median(d):+.3g})"
    ]
    # two large tasks and eight tiny ones of the same sign: no flip, but the mean shrinks
    shrink = [v + 0.01 for v in b]
    shrink[2] += 1.0
    shrink[5] += 1.0
    assert win_rates(_pair_table(shrink, b))[("a", "b")]["driven_by_few"] is True
    consistent = [v + 0.1 + 0.01 * (i % 3) for i, v in enumerate(b)]  # always worse by ~0.1
    c = win_rates(_pair_table(consistent, b))
    assert c[("a", "b")]["driven_by_few"] is False and c[("a", "b")]["rate"] == 0.0
    assert notes(summarise(_pair_table(consistent, b)), c) == []
    two = win_rates(_pair_table([1.0, 9.0], [2.0, 1.0]))[("a", "b")]
    assert two["driven_by_few"] is False and two["few"] == 0  # too few tasks to tell


def test_anytime_curve_and_time_to_target() -> None:
    # two members; events in wall order: (a,10,5) (b,10,4) (a,20,3) (b,20,1)
    rows = [
        _val("p", "A", 0, "a", 10, 1.0, 5.0),
        _val("p", "A", 0, "a", 20, 2.0, 3.0),
        _val("p", "A", 0, "b", 10, 1.5, 4.0),
        _val("p", "A", 0, "b", 20, 2.5, 1.0),
        _final("p", "A", 0, 1.1),
    ]
    table = rows_to_table(rows)
    curve = run_curves(table, "val_loss")[("p", "A", 0)]
    assert curve.budget.tolist() == [10, 20, 30, 40]
    assert curve.best.tolist() == [5, 4, 3, 1]
    assert curve.at(np.array([5.0, 10.0, 29.0, 100.0])).tolist() == [math.inf, 5.0, 4.0, 1.0]
    (d,) = summarise(table, target=3.5)
    assert (
        d["steps_to_target"] == 30
        and d["wall_to_target"] == 2.0
        and d["reached"] == 1
        and d["runs"] == 1
    )
    (d,) = summarise(table, target=0.5)
    assert d["steps_to_target"] is None and d["wall_to_target"] is None and d["reached"] == 0
    (d,) = summarise(
        table
    )  # default target: the (only) strategy's final best -> reached at the end
    assert d["steps_to_target"] == 40


def _reference_curve(
    events: list[tuple[float, int, str, float]],
) -> tuple[list[float], list[float]]:
    """Plain loop over (wall, step, trial, value) events: the definition the engine must match."""
    last: dict[str, int] = {}
    total, best, budgets, bests = 0, math.inf, [], []
    clean = [(w, st, tr, v if math.isfinite(v) else math.inf) for w, st, tr, v in events]
    for _, step, trial, value in sorted(clean):  # time order; ties broken by step, trial, value
        prev = last.get(trial, 0)
        total += max(step - prev, 0)
        last[trial] = max(prev, step)
        best = min(best, value)
        budgets.append(total)
        bests.append(best)
    return budgets, bests


def test_vectorised_curves_match_reference_loop() -> None:
    rng = np.random.default_rng(3)
    rows, events = [], {}
    for strategy in ("a", "b"):
        for task in ("x", "y", "z"):
            for seed in (0, 5):
                evs = []
                for trial in range(int(rng.integers(1, 6))):
                    steps = np.cumsum(rng.integers(1, 20, size=int(rng.integers(1, 8))))
                    if rng.random() < 0.3:  # a PBT-style restart reporting a lower step
                        steps[len(steps) // 2 :] -= steps[0]
                    for st in steps:
                        wall = float(rng.integers(0, 50))  # coarse, so equal walls (ties) happen
                        v = float(rng.lognormal()) if rng.random() > 0.05 else float("nan")
                        evs.append((wall, int(st), f"m{trial}", v))
                        rows.append(_val(strategy, task, seed, f"m{trial}", int(st), wall, v))
                events[(strategy, task, seed)] = evs
    order = rng.permutation(len(rows))
    curves = run_curves(rows_to_table([rows[i] for i in order]), "val_loss")
    assert set(curves) == set(events)
    for key, evs in events.items():
        budgets, bests = _reference_curve(evs)
        assert curves[key].budget.tolist() == budgets
        assert curves[key].best.tolist() == bests


def test_default_target_is_worst_strategys_final_best() -> None:
    rows = [_val("fast", "A", 0, "m", s, s / 10, 10.0 / s) for s in (10, 20, 40)]  # 1.0, 0.5, 0.25
    rows += [_val("slow", "A", 0, "m", s, s / 10, 20.0 / s) for s in (10, 20, 40)]  # 2.0, 1.0, 0.5
    rows += [_final("fast", "A", 0, 0.25), _final("slow", "A", 0, 0.5)]
    out = {d["strategy"]: d for d in summarise(rows_to_table(rows))}
    assert out["fast"]["steps_to_target"] == 20 and out["slow"]["steps_to_target"] == 40
    assert out["fast"]["wall_to_target"] == pytest.approx(2.0)


def test_synthetic_ordering_and_errors() -> None:
    table = rows_to_table(synthetic_rows(tasks=("a", "b"), seeds=(0, 1)))
    order = [d["strategy"] for d in summarise(table)]
    assert order == [
        "meta+prior+pbt",
        "meta+fixed-default",
        "scratch+broad+pbt",
        "scratch+broad+random",
    ]
    with pytest.raises(DataError, match="no rows"):
        summarise(SCHEMA.empty_table())
    with pytest.raises(DataError, match="test_accuracy"):
        summarise(table, metric="test_accuracy")
    assert validation_metric("test_accuracy") == "val_accuracy"
    # two sweeps that reuse task names: their runs stay separate instead of being averaged
    both = pa.concat_tables(
        [table, rows_to_table(synthetic_rows(sweep="again", tasks=("a", "b"), seeds=(0, 1)))]
    )
    d = summarise(both)[0]
    assert d["n"] == 8 and d["tasks"] == 4 and d["runs"] == 8


def test_render_formats() -> None:
    summary = summarise(rows_to_table(synthetic_rows(tasks=("a",), seeds=(0, 1))))
    text = render(summary, "table")
    lines = text.splitlines()
    assert lines[0].startswith("strategy") and set(lines[1]) <= {"-", " "}
    width = len(lines[1])
    assert all(len(line) == width for line in lines[: 2 + len(summary)])  # aligned, right-justified
    assert len(lines) == 2 + len(summary) + 2
    md = render(summary, "markdown").splitlines()
    assert (
        md[0].startswith("| strategy")
        and md[1].startswith("|---|")
        and len(md) == 2 + len(summary) + 2
    )
    doc = json.loads(render(summary, "json"))
    assert doc["metric"] == "test_loss" and len(doc["strategies"]) == len(summary)
    assert "win_rates" not in doc and lines[0].split()[:6] == [
        "strategy",
        "n",
        "tasks",
        "test_loss",
        "mean",
        "median",
    ]
    # with win rates and notes: a numbered matrix after the table, then the notes
    table = rows_to_table(synthetic_rows(tasks=("a", "b"), seeds=(0, 1)))
    summary = summarise(table)
    wins = win_rates(table)
    full = render(summary, "table", wins=wins, notes=["x: a note"]).splitlines()
    at = full.index("") + 3  # blank, footer, blank, matrix
    assert full[at].startswith("win rate (row vs column)") and full[at].split()[-1] == "[4]"
    first = full[at + 2].split()
    assert first[:2] == ["[1]", "meta+prior+pbt"] and first[2] == "-"
    rate = wins[("meta+prior+pbt", "scratch+broad+random")]["rate"]
    assert first[-1] == f"{rate:.2f}" and full[-1] == "note: x: a note"
    md = render(summary, "markdown", wins=wins, notes=["x: a note"]).splitlines()
    assert "| [1] meta+prior+pbt | - |" in "\n".join(md) and md[-1] == "- x: a note"
    doc = json.loads(render(summary, "json", wins=wins, notes=["x: a note"]))
    assert len(doc["win_rates"]) == 12 and doc["notes"] == ["x: a note"]
    pair = next(
        w
        for w in doc["win_rates"]
        if (w["a"], w["b"]) == ("meta+prior+pbt", "scratch+broad+random")
    )
    assert pair["rate"] == rate and pair["tasks"] == 2
    one = summarise(rows_to_table([_final("x", "A", 0, 1.0)]))
    assert (
        json.loads(render(one, "json"))["strategies"][0]["ci_low"] is None
    )  # NaN -> null, valid JSON
    assert "-" in render(one, "table").splitlines()[2]


def test_plots_written_and_readable(tmp_path: Path) -> None:
    from matplotlib.image import imread

    table = rows_to_table(synthetic_rows(tasks=("a", "b"), seeds=(0,)))
    paths = make_plots(table, tmp_path / "plots")
    assert [p.name for p in paths] == [
        "best_val_loss_vs_member_steps.png",
        "best_val_loss_vs_wall_time.png",
        "rank_vs_budget_val_loss.png",
    ]
    for p in paths:
        img = imread(p)
        assert img.shape[0] > 400 and img.shape[1] > 600
        assert float(np.std(img[..., :3])) > 0.05  # not a blank canvas
    assert not list((tmp_path / "plots").glob(".*"))  # no temp files left
    single = table.filter(pa.compute.equal(table["strategy"], "meta+prior+pbt"))
    assert len(make_plots(single, tmp_path / "one")) == 2  # a rank needs two strategies
    nan_run = [_val("x", "A", 0, "m", st, st / 10, float("nan")) for st in (10, 20)]
    nan_run += [_val("x", "A", 1, "m", st, st / 10, 1.0 / st) for st in (10, 20)]
    nan_run += [_val("y", "A", s, "m", 5, 0.5, 0.3) for s in (0, 1)]
    assert (
        len(make_plots(rows_to_table(nan_run), tmp_path / "nan")) == 3
    )  # a diverged run is drawn around
    with pytest.raises(DataError, match="val_loss"):
        make_plots(rows_to_table([_final("x", "A", 0, 1.0)]), tmp_path / "none")


def test_results_layer_does_not_import_ray_or_torch() -> None:
    code = "import sys, raymeta.results; print(sorted(m for m in ('ray', 'torch', 'matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
