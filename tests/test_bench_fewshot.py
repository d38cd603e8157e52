"""``raymeta bench fewshot`` (issue 18): the command in smoke mode for each suite, its JSON
records, the 95% interval against an independent computation, the verdict sentences, bad
inputs, and the ``fixed-head`` (linear probe) strategy it made expressible in sweeps."""

from __future__ import annotations

import json
import math
import random
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from raymeta.bench.fewshot import (
    LEARNED,
    Interval,
    interval,
    pick_config,
    portfolio_configs,
    render,
    verdict,
)
from raymeta.cli.main import main
from raymeta.core.train import MetaTrainConfig, MetaTrainer
from raymeta.errors import ConfigError
from raymeta.finetune.hparams import broad_space
from raymeta.finetune.run import run_strategy
from raymeta.finetune.strategy import Strategy, member_configs
from raymeta.priors import broad_prior

ROW_FIELDS = {"row", "kind", "init", "config", "config_source", "results", "n", "seconds"}


def _smoke(tmp_path: Path, suite: str, setting: str, *extra: str) -> dict[str, Any]:
    out = tmp_path / f"{suite}.json"
    argv = ["bench", "fewshot", "--suite", suite, "--budget", "smoke", "--setting", setting]
    rc = main([*argv, "--episodes", "4", "--quiet", "--out", str(out), *extra])
    assert rc == 0
    return json.loads(out.read_text())


def _check_record(doc: dict[str, Any], suite: str, metric: str, steps: list[int]) -> None:
    assert doc["benchmark"] == "fewshot" and doc["suite"] == suite and doc["budget"] == "smoke"
    assert {"torch", "raymeta"} <= set(doc["versions"])
    (rec,) = doc["settings"]
    assert rec["metric"] == metric and rec["episodes"] == 4 and rec["report_steps"] == steps
    kinds = [r["kind"] for r in rec["rows"]]
    learned = [r for r in rec["rows"] if r["config_source"] == LEARNED]
    assert kinds.count("meta") == 3 + len(learned) and kinds.count("pretrain") == 3
    assert "scratch" in kinds
    # the selected row is the fixed protocol or a portfolio config, chosen on meta-val
    sel = next(r for r in rec["rows"] if "selected on meta-val" in r["row"])
    assert "best of" in sel["config_source"] and "on meta-val" in sel["config_source"]
    fixed = rec["rows"][0]
    assert sel["config_source"].startswith(("fixed protocol", "priors portfolio #"))
    if sel["config_source"].startswith("fixed protocol"):
        assert sel["config"] == fixed["config"] and sel["results"] == fixed["results"]
    for row in rec["rows"]:
        assert set(row) >= ROW_FIELDS and row["n"] == 4
        assert row["config"]["steps"] <= rec["ft_steps"]  # one budget for every row
        assert row["config"].get("learned_rates", False) == (row in learned)
        for s in steps:
            r = row["results"][str(s)]
            assert math.isfinite(r["mean"]) and r["ci95"] >= 0
            assert r["low"] == pytest.approx(r["mean"] - r["ci95"])
            assert r["high"] == pytest.approx(r["mean"] + r["ci95"])
            if metric == "accuracy_pct":
                assert 0.0 <= r["mean"] <= 100.0
    probe = next(r for r in rec["rows"] if "linear probe" in r["row"])
    assert probe["config"]["adapt"] == "head"
    assert len(doc["verdicts"]) == 1 and doc["verdicts"][0].startswith(rec["setting"])


def test_smoke_sinusoid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _smoke(tmp_path, "sinusoid", "K5-maml1")
    _check_record(doc, "sinusoid", "mse", [1, 2])
    assert doc["settings"][0]["anchors"]["MAML"] == {"1": 0.67, "5": 0.38, "10": 0.35}
    assert any("target <= 0.2" in t for t in doc["targets"])
    assert doc["settings"][0]["pretrain"]["formulation"] == "episodic"  # no classes to pool
    printed = capsys.readouterr().out
    assert "MAML (published)" in printed and "smoke budget" in printed


def test_smoke_sinusoid_learned_rates_row(tmp_path: Path) -> None:
    """An init that learned its inner rates (K5-lslr) gets a row scored with its own inner
    loop beside the fixed protocol; the others do not (test_smoke_sinusoid)."""
    doc = _smoke(tmp_path, "sinusoid", "K5-lslr")
    _check_record(doc, "sinusoid", "mse", [1, 2])
    rec = doc["settings"][0]
    (row,) = [r for r in rec["rows"] if r["config_source"] == LEARNED]
    assert row["row"] == "raymeta MAML+LSLR init, its learned inner loop" and row["kind"] == "meta"
    assert rec["meta_train"]["learn_inner_lr"] and rec["meta_train"]["rates_lr_scale"] == 0.1


@pytest.mark.parametrize("algo", ["maml", "metasgd"])
def test_learned_loop_episodes_equal_the_looped_reference(algo: str) -> None:
    """Per-episode MSE of the learned-loop row against ``ref_adapt`` (autograd, one task at a
    time, float64), LSLR's steps past the learned ones at the inner lr."""
    from dataclasses import replace

    from raymeta.bench.fewshot import learned_loop, learned_loop_episodes
    from raymeta.core.models import build_model
    from raymeta.core.reference import ref_adapt, ref_loss
    from raymeta.tasks import FamilySpec, make_family

    fam = {"shots": 5, "queries": 10, "task_shots": 5, "test_size": 7}
    meta = {
        "algo": algo,
        "inner_steps": 2,
        "inner_lr": 0.02,
        "learn_inner_lr": algo == "maml",
        "rates_lr_scale": 0.5,
        "model": "mlp",
        "model_options": {"widths": [8, 8]},
        "meta_batch": 4,
    }
    cfg = MetaTrainConfig(
        family="sinusoid", family_options=fam, steps=3, val_tasks=2, val_every=3, **meta
    ).validate()
    tr = MetaTrainer(cfg)
    for _ in range(3):
        tr.apply(tr.local_grad()[1])
    cand = tr.to_checkpoint().candidate()
    cand = replace(cand, params={k: v.double() for k, v in cand.params.items()})
    assert learned_loop(meta, 10) == {"learned_rates": True, "steps": 10, "inner_lr": 0.02}
    assert learned_loop({**meta, "algo": "maml", "learn_inner_lr": False}, 10) == {}
    family = make_family(FamilySpec("sinusoid", fam))
    tasks = [family.task("test", i) for i in range(5)]
    got = learned_loop_episodes(cand, tasks, meta, (1, 2, 4))
    model = build_model(cand.spec).double()
    for steps in (1, 2, 4):
        p = dict(cand.params)
        if algo == "maml" and steps > 2:  # LSLR past its learned steps: the inner lr
            p = {
                k: torch.cat([v, v.new_full((steps - 2,), 0.02)]) if k.startswith("lslr.") else v
                for k, v in p.items()
            }
        for i, t in enumerate(tasks):
            leaf = {k: v.detach().requires_grad_(True) for k, v in p.items()}
            fast = ref_adapt(
                model,
                "regression",
                leaf,
                t.x_train.double(),
                t.y_train.double(),
                steps,
                0.02,
                algo=algo,
                first_order=True,
                learn_lr=algo == "maml",
            )
            out = torch.func.functional_call(model, fast, (t.x_test.double(),))
            want = float(ref_loss("regression", out, t.y_test.double()).detach())
            assert got[steps][i] == pytest.approx(want, rel=1e-10), (steps, i)


def test_smoke_digits(tmp_path: Path) -> None:
    doc = _smoke(tmp_path, "digits", "5w1s")
    _check_record(doc, "digits", "accuracy_pct", [2])
    # the pretrain rows' init is the "Closer Look" baseline: 24-way on global labels, N-way head
    pre = doc["settings"][0]["pretrain"]
    assert pre["formulation"] == "global-labels" and pre["classes"] == 24
    assert pre["head_init"] == "zeros" and pre["batch_size"] == 2 * 5 * (1 + 15)


def test_smoke_omniglot(tmp_path: Path, omniglot_dir: Path) -> None:
    doc = _smoke(tmp_path, "omniglot", "5w1s", "--data-path", str(omniglot_dir))
    _check_record(doc, "omniglot", "accuracy_pct", [2])
    assert doc["settings"][0]["anchors"]["Meta-SGD"] == 99.53
    assert "path" not in doc["settings"][0]["family_options"]  # no machine path in records
    pre = doc["settings"][0]["pretrain"]  # 1100 meta-train characters x 4 rotations
    assert pre["formulation"] == "global-labels" and pre["classes"] == 4400


def test_interval_matches_an_independent_computation() -> None:
    rng = random.Random(7)
    for n in (2, 3, 50, 600):
        vals = [rng.gauss(0.5, 2.0) for _ in range(n)]
        z = statistics.NormalDist().inv_cdf(0.975)
        half = z * statistics.stdev(vals) / math.sqrt(n)
        iv = interval(vals)
        assert iv.n == n
        assert iv.mean == pytest.approx(statistics.fmean(vals), rel=1e-12, abs=1e-15)
        assert iv.half == pytest.approx(half, rel=1e-12)
        # and against numpy's float64 sample standard deviation
        assert iv.half == pytest.approx(z * np.std(vals, ddof=1) / np.sqrt(n), rel=1e-12)
    assert interval([3.0]) == Interval(3.0, 0.0, 1)
    assert interval([1.0, 1.0, 1.0]).half == 0.0


def _rec(metric: str, meta: tuple[float, float], pre: tuple[float, float]) -> dict[str, Any]:
    def row(name: str, kind: str, mean: float, half: float) -> dict[str, Any]:
        res = {"mean": mean, "ci95": half, "low": mean - half, "high": mean + half}
        return {"row": name, "kind": kind, "config": {"lr": 0.1, "steps": 10}, "n": 600,
                "results": {"10": res}}  # fmt: skip

    return {
        "suite": "digits" if metric != "mse" else "sinusoid",
        "setting": "s",
        "budget": "cpu",
        "metric": metric,
        "episodes": 600,
        "ft_steps": 10,
        "report_steps": [10],
        "anchors": {},
        "meta_train": {
            "algo": "maml",
            "steps": 1,
            "inner_steps": 1,
            "inner_lr": 0.1,
            "meta_batch": 2,
            "seconds": 0.0,
        },  # fmt: skip
        "pretrain": {"steps": 1, "seconds": 0.0},
        "priors": {"seconds": 0.0},
        "rows": [
            row("meta-a", "meta", *meta),
            row("meta-worse", "meta", meta[0] - 50 if metric != "mse" else meta[0] + 50, 0.1),
            row("pre-a", "pretrain", *pre),
            row("scratch", "scratch", 20.0, 1.0),
        ],
    }


def test_verdicts_come_from_the_intervals() -> None:
    assert "meta-learning wins" in verdict(_rec("accuracy_pct", (90.0, 1.0), (85.0, 1.0)))
    assert "pretraining wins" in verdict(_rec("accuracy_pct", (85.0, 1.0), (90.0, 1.0)))
    assert "no clear winner" in verdict(_rec("accuracy_pct", (90.0, 3.0), (85.0, 3.0)))
    # lower is better for MSE
    assert "meta-learning wins" in verdict(_rec("mse", (0.2, 0.01), (0.5, 0.01)))
    assert "pretraining wins" in verdict(_rec("mse", (0.5, 0.01), (0.2, 0.01)))
    lines = render([_rec("accuracy_pct", (90.0, 1.0), (85.0, 1.0))])
    assert "[cpu budget]" in "\n".join(lines) and lines[-1].startswith("s: meta-learning wins")
    # a diverged pretrain row (NaN) prints as such and never counts as the best
    rec = _rec("mse", (0.4, 0.05), (3.0, 0.2))
    rec["rows"].append(dict(rec["rows"][2], row="pre-nan"))
    rec["rows"][-1]["results"] = {"10": {"mean": math.nan, "ci95": math.nan}}
    text = "\n".join(render([rec]))
    assert "diverged" in text and "vs pre-a 3 MSE" in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--suite", "imagenet"], "unknown suite 'imagenet'"),
        (["--suite", "digits", "--budget", "huge"], "unknown budget 'huge'"),
        (["--suite", "omniglot", "--data-path", "/nonexistent/omni"], "does not exist"),
        (["--suite", "digits", "--episodes", "0"], "--episodes"),
        (["--suite", "digits", "--setting", "7w3s"], "--setting '7w3s'"),
        (["--suite", "digits", "--priors-pick", "best"], "--priors-pick"),
    ],
)
def test_bad_inputs_are_one_line(
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RAYMETA_OMNIGLOT", raising=False)
    assert main(["bench", "fewshot", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("raymeta: error:") and message in err[0]


def test_omniglot_without_a_data_path_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAYMETA_OMNIGLOT", raising=False)
    assert main(["bench", "fewshot", "--suite", "omniglot", "--budget", "smoke"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no data path given" in err[0] and "--data-path" in err[0]


def test_fixed_head_strategy_is_a_linear_probe() -> None:
    """``INIT+fixed-head``: one member, the fixed default fine-tune of the head only; a sweep
    over a checkpoint with an ``algo=pretrain`` candidate runs 'pretrain, then linear probe'."""
    s = Strategy.parse("meta+fixed-head")
    assert s.fixed and s.name == "meta+fixed-head" and s.scheduler == "random"
    assert Strategy.parse("meta+fixed-head+refit").pick == "refit"
    with pytest.raises(ConfigError):
        Strategy.parse("meta+fixed-tail")
    fixed = {"lr": 0.01, "steps": 5, "batch_size": 5, "model": "mlp"}
    prior = broad_prior(broad_space(["mlp"], max_batch=5, max_steps=5))
    rng = np.random.default_rng(0)
    assert member_configs(s, 4, prior, [], rng, fixed) == [dict(fixed, adapt="head")]
    assert member_configs(Strategy.parse("meta+fixed-default"), 4, prior, [], rng, fixed) == [fixed]
    cfg = MetaTrainConfig(family="sinusoid", algo="pretrain", steps=1, model="mlp")
    ckpt = MetaTrainer(cfg).to_checkpoint(name="pretrain")
    task = ckpt_task()
    res = run_strategy(
        ckpt, s, task, population=1, steps=5, interval=5, seed=0, rng=np.random.default_rng(0)
    )
    init = ckpt.candidate().params
    assert res.pick.config["adapt"] == "head"
    for k, v in res.pick.params.items():
        moved = not torch.equal(v.reshape(init[k].shape), init[k])
        assert moved == k.startswith("head."), k  # only the head moved


def ckpt_task() -> Any:
    from raymeta.tasks import FamilySpec, make_family

    return make_family(FamilySpec("sinusoid", {})).task("test", 0)  # type: ignore[arg-type]


def test_priors_rows_pick_on_meta_val() -> None:
    """``val`` takes the portfolio config with the best meta-val score (a diverged one, NaN,
    never wins); ``first`` the fit's first; steps and minibatch stay within the budget."""
    portfolio = [
        {"lr": 0.01, "steps": 50, "batch_size": 99, "adapt": "head"},
        {"lr": 0.1, "steps": 5, "adapt": "all"},
        {"lr": 9.0, "steps": 5, "adapt": "all"},
    ]
    opts = portfolio_configs(portfolio, None, budget=10, n_train=5)
    assert [c["steps"] for c, _ in opts] == [10, 5, 5] and opts[0][0]["batch_size"] == 5
    loss = {0.01: 1.0, 0.1: 0.5, 9.0: float("nan")}
    cfg, how = pick_config(opts, "val", lambda c: loss[c["lr"]], higher=False)
    assert cfg["lr"] == 0.1 and "portfolio #2" in how and "meta-val" in how
    acc = {0.01: 80.0, 0.1: 60.0, 9.0: float("nan")}
    assert pick_config(opts, "val", lambda c: acc[c["lr"]], higher=True)[0]["lr"] == 0.01
    assert pick_config(opts, "first", lambda c: 0.0, higher=False)[0]["lr"] == 0.01
    # keep_first_within: the first (a default) stays unless beaten by more than the margin
    near = {0.01: 0.382, 0.1: 0.380, 9.0: float("nan")}
    cfg, how = pick_config(opts, "val", lambda c: near[c["lr"]], False, keep_first_within=0.05)
    assert cfg["lr"] == 0.01 and "within 5% of the best of 3" in how
    assert pick_config(opts, "val", lambda c: loss[c["lr"]], False, 0.05)[0]["lr"] == 0.1
    near_acc = {0.01: 54.0, 0.1: 56.0, 9.0: float("nan")}
    assert pick_config(opts, "val", lambda c: near_acc[c["lr"]], True, 0.05)[0]["lr"] == 0.01
    assert pick_config(opts, "val", lambda c: near_acc[c["lr"]], True, 0.01)[0]["lr"] == 0.1
    (head,) = portfolio_configs(portfolio, "head", 10, 5)
    assert head[0]["adapt"] == "head" and head[1] == "priors portfolio #1"
    (forced,) = portfolio_configs(portfolio[1:], "head", 10, 5)
    assert forced[0]["adapt"] == "head" and "with adapt=head" in forced[1]


def test_sinusoid_report_names_each_init_architecture() -> None:
    """The sinusoid settings differ in their model (K5-best: 3 hidden layers of 40), so the
    report's meta-train line says which one and how the outer rate ran; older records without
    the model still render."""
    from raymeta.bench.fewshot import architecture, settings

    best = next(s for s in settings("sinusoid", "cpu") if s.name == "K5-best")
    assert architecture(best.meta) == "mlp 40x40x40"
    rec = _rec("mse", (0.2, 0.01), (0.5, 0.01))
    rec["meta_train"] |= {k: best.meta[k] for k in ("model", "model_options", "outer_lr")}
    rec["meta_train"] |= {"outer_schedule": "cosine", "outer_lr_min": 1e-5}
    text = "\n".join(render([rec]))
    assert "(meta-train: mlp 40x40x40, MAML 1 steps" in text
    assert "outer lr 0.01 cosine to 1e-05" in text
    assert "(meta-train: MAML 1 steps" in "\n".join(render([_rec("mse", (0.2, 0.01), (0.5, 0.01))]))


def test_target_judges_a_learned_loop_after_its_own_steps() -> None:
    """The sinusoid target ("<= 0.20 after at most 10 steps") judges a learned inner loop
    after the steps its rates were trained for (fixed before any test episode), every other
    row after the budget's last step; a NaN row never wins."""
    from raymeta.bench.fewshot import target_line

    rec = _rec("mse", (0.30, 0.02), (2.0, 0.1))
    rec["report_steps"] = [3, 10]
    rec["meta_train"]["inner_steps"] = 3

    def res(mean: float) -> dict[str, float]:
        return {"mean": mean, "ci95": 0.01, "low": mean - 0.01, "high": mean + 0.01}

    for row in rec["rows"]:
        row["results"]["3"] = res(0.25)
    learned = {"row": "own loop", "kind": "meta", "n": 600, "config": {"learned_rates": True}}
    rec["rows"].append({**learned, "results": {"3": res(0.15), "10": res(3.0)}})
    rec["rows"].append({**learned, "row": "nan", "results": {"3": res(math.nan), "10": res(0.1)}})
    line = target_line(rec)
    assert line is not None
    assert "target <= 0.2: met" in line and "own loop, 0.15 after 3 steps" in line
    rec["rows"][-2]["results"]["3"] = res(0.35)  # the learned loop no better than the rest
    line = target_line(rec)
    assert line is not None
    assert "MISSED" in line and "meta-a, 0.3 after 10 steps" in line
