"""Final picks (best, refit, soup), strategy selection on meta-val tasks, and ``auto``.

The refit is checked against the looped ``torch.optim`` reference in float64 (one member on
train + val), the soup against a numpy mean of the snapshots, and the selection rule against
hand-computed tables.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from raymeta.core.checkpoint import MetaCheckpoint, load_meta_checkpoint, write_priors
from raymeta.core.models import build_model
from raymeta.errors import ConfigError
from raymeta.finetune.fit import fit_priors
from raymeta.finetune.picks import final_pick, soup_members
from raymeta.finetune.population import Population, initial_state
from raymeta.finetune.reference import ref_train_member
from raymeta.finetune.run import run_population
from raymeta.finetune.select import Arm, choose, mean_ranks
from raymeta.finetune.strategy import Strategy, resolve_auto
from raymeta.orchestration.sweep.config import parse_sweep
from raymeta.orchestration.tune.plan import resolve_request
from raymeta.orchestration.tune.request import TuneRequest
from raymeta.priors import Priors, load_priors
from raymeta.tasks import make_family


def _task64(ckpt: MetaCheckpoint) -> tuple:
    task = make_family(ckpt.family).task("test", 0)
    for s in ("train", "val", "test"):
        for v in ("x", "y"):
            setattr(task, f"{v}_{s}", getattr(task, f"{v}_{s}").double())
    return task


def test_strategy_names_carry_the_final_pick() -> None:
    for name, pick in [
        ("meta+learned+pbt", "best"),
        ("meta+learned+pbt+refit", "refit"),
        ("scratch+broad+random+soup", "soup"),
        ("meta+fixed-default+refit", "refit"),
    ]:
        s = Strategy.parse(name)
        assert s.pick == pick and s.name == name and Strategy.parse(s.name) == s
    assert Strategy.parse("meta+fixed-default+best").name == "meta+fixed-default"
    for bad in ("meta+learned+pbt+bogus", "meta+refit", "auto", "meta+learned+refit"):
        with pytest.raises(ConfigError, match="unknown strategy"):
            Strategy.parse(bad)


def test_refit_matches_the_looped_reference_on_train_plus_val(ckpt: MetaCheckpoint) -> None:
    """The refit trains the best snapshot's config from the member's init on train + val for
    the snapshot's steps; a full batch stays a full batch of the larger set."""
    task = _task64(ckpt)
    cand = ckpt.candidate()
    configs = [
        {"lr": 0.02, "optimizer": "sgd", "batch_size": len(task.x_train)},
        {"lr": 0.005, "optimizer": "adam", "batch_size": 3},
    ]
    res = run_population(
        task, ckpt.candidates, configs, init="meta", steps=6, interval=2, seed=5, picks=("refit",)
    )
    pk = res.pick
    cfg = dict(res.best.config)
    steps = int(cfg["steps"])
    assert pk.extra_steps == steps and res.member_steps == 12 + steps
    x = torch.cat([task.x_train, task.x_val])
    y = torch.cat([task.y_train, task.y_val])
    if cfg["batch_size"] >= len(task.x_train):
        cfg["batch_size"] = len(x)
    model = build_model(cand.spec).double()
    start = {k: cand.params[k].double() for k, _ in model.named_parameters()}
    want = ref_train_member(
        model, task.kind, start, cfg, 5 * 1_000_003 + res.best.member, x, y, steps
    )
    for k, v in want.items():
        torch.testing.assert_close(pk.params[k], v, rtol=1e-9, atol=1e-10)
    test = torch.nn.functional.mse_loss(
        torch.func.functional_call(model, want, (task.x_test,)), task.y_test
    )
    assert pk.test["test_loss"] == pytest.approx(float(test), rel=1e-9)


def test_soup_is_the_mean_of_the_best_members_snapshots(ckpt: MetaCheckpoint) -> None:
    task = _task64(ckpt)
    cand = ckpt.candidate()
    configs = [{"lr": lr, "batch_size": 4} for lr in (0.001, 0.01, 0.03, 0.1, 0.2, 0.3, 0.5, 1.0)]
    seeds = list(range(len(configs)))
    state = initial_state(cand.spec, cand.params, seeds, torch.float64)
    pop = Population(cand.spec, task.kind, cand.name, configs, seeds, state, horizon=5)
    for _ in range(3):
        pop.train(task.x_train, task.y_train, 2)
        pop.evaluate(task.x_val, task.y_val)
    val = pop.best_val.numpy()
    order = [i for i in np.argsort(val, kind="stable") if np.isfinite(val[i])]
    assert soup_members(pop) == order[:2]  # ceil(8 / 4) = 2
    pk = final_pick("soup", pop, task, lambda m: state, soup_ok=True)
    assert pk.members == 2
    for k, v in pop.best_params.items():
        want = v.numpy()[order[:2]].mean(axis=0)
        np.testing.assert_allclose(pk.params[k].numpy(), want, rtol=1e-12)
    # no shared init (scratch): soup is the best snapshot
    best = final_pick("soup", pop, task, lambda m: state, soup_ok=False)
    b = pop.best()
    assert best.members == 1 and all(torch.equal(best.params[k], b.params[k]) for k in b.params)


def test_choose_takes_the_best_rank_within_the_tolerance_of_the_lowest_mean() -> None:
    fixed, learned, scratch = (
        Arm(Strategy("meta", "fixed-default"), "c"),
        Arm(Strategy("meta", "learned", "pbt")),
        Arm(Strategy("scratch", "broad", "pbt")),
    )
    meta = {"f": (fixed, "best"), "l": (learned, "best"), "s": (scratch, "best")}
    # f has the lowest mean (one bad task for l); l wins 4 of 5 tasks by a little
    losses = {
        "f": np.array([1.0, 1.0, 1.0, 1.0, 1.0]),
        "l": np.array([0.9, 0.9, 0.9, 0.9, 1.45]),
        "s": np.array([2.0, 2.0, 2.0, 2.0, 2.0]),
    }
    ranks = mean_ranks(losses)
    assert ranks == {"f": pytest.approx(1.8), "l": pytest.approx(1.2), "s": 3.0}
    rec = choose(losses, meta)  # mean l = 1.01 is within 5% of 1.0: the better rank wins
    assert rec["chosen_label"] == "l" and rec["chosen"] == "meta+learned+pbt"
    assert rec["vs_default"]["wins"] == 4 and rec["vs_default"]["diff"] == pytest.approx(0.01)
    assert [r["label"] for r in rec["table"]] == ["l", "f", "s"]
    losses["l"][4] = 1.9  # mean 1.1: out of the tolerance, the lowest mean wins
    assert choose(losses, meta)["chosen_label"] == "f"
    assert choose(losses, meta, tolerance=0.05)["table"][0]["win_rate_vs_chosen"] == 0.5
    losses["l"][4] = np.inf  # a diverged task: the mean is inf, never chosen
    assert choose(losses, meta, tolerance=10.0)["chosen_label"] == "f"


@pytest.fixture(scope="module")
def selected(tmp_path_factory: pytest.TempPathFactory, ckpt_dir: Path) -> Path:
    d = tmp_path_factory.mktemp("sel") / "ckpt"
    shutil.copytree(ckpt_dir, d)
    pr = fit_priors(
        load_meta_checkpoint(d),
        n_tasks=3,
        n_configs=6,
        max_steps=8,
        refine_repeats=0,
        select_tasks=3,
        select_population=3,
    )
    write_priors(d, pr.to_dict())
    return d


def test_priors_fit_records_the_selection(selected: Path) -> None:
    ck = load_meta_checkpoint(selected)
    pr = load_priors(ck)
    sel = pr.selection
    assert pr.version == 3 and sel is not None
    assert sel["tasks"] == 3 and sel["tasks_disjoint"] and sel["population"] == 3
    labels = {r["label"] for r in sel["table"]}
    want = {
        "meta+fixed-default",
        "meta+fixed-default+refit",
        "meta+learned+pbt",
        "meta+learned+pbt+refit",
        "meta+learned+pbt+soup",
        "meta+broad+pbt",
        "meta+broad+pbt+refit",
        "meta+broad+pbt+soup",
        "scratch+broad+pbt",
        "scratch+broad+pbt+refit",
    }
    assert labels == want
    rows = {r["label"]: r for r in sel["table"]}
    chosen = rows[sel["chosen_label"]]
    low = min(r["mean"] for r in rows.values())
    assert chosen["mean"] <= low * 1.05 + 1e-12  # within the tolerance of the lowest mean
    assert chosen["win_rate_vs_chosen"] == 0.5
    assert rows["meta+fixed-default"]["member_steps"] == 8  # one member, 8 steps
    # the record round-trips and auto resolves to it
    again = Priors.from_dict(json.loads(json.dumps(pr.to_dict())))
    assert again.selection == sel
    strat, why = resolve_auto(ck)
    assert strat.name == sel["chosen"] and why == sel["why"]
    # the same fit gives the same choice
    pr2 = fit_priors(
        ck,
        n_tasks=3,
        n_configs=6,
        max_steps=8,
        refine_repeats=0,
        select_tasks=3,
        select_population=3,
    )
    assert pr2.selection is not None
    assert [r["mean"] for r in pr2.selection["table"]] == [r["mean"] for r in sel["table"]]


def test_auto_without_evidence(ckpt: MetaCheckpoint) -> None:
    assert resolve_auto(replace(ckpt, priors=None))[0].name == "meta+broad+pbt"
    pr = fit_priors(ckpt, n_tasks=2, n_configs=4, max_steps=4, refine_repeats=0, select_tasks=0)
    assert pr.selection is None
    strat, why = resolve_auto(replace(ckpt, priors=pr.to_dict()))
    assert strat.name == "meta+learned+pbt" and "before strategy selection" in why


def test_auto_resolves_per_checkpoint_in_tune_and_sweeps(selected: Path, tmp_path: Path) -> None:
    ck = load_meta_checkpoint(selected)
    sel = load_priors(ck).selection
    assert sel is not None
    req, why = resolve_request(TuneRequest(str(selected), "sinusoid:0", trials=4), ck)
    assert req.strategy_label == sel["chosen"] and why.startswith(f"auto = {sel['chosen']}: ")
    if req.as_strategy().fixed:  # one member for the asked-for steps per member
        assert (req.trials, req.members_per_trial, req.total_budget) == (1, 1, 100)
    else:
        assert req.trials == 4
    fixed = dict(load_priors(ck).to_dict(), selection={**sel, "chosen": "meta+fixed-default+refit"})
    req, why = resolve_request(
        TuneRequest(str(selected), "sinusoid:0", trials=4, budget=40), replace(ck, priors=fixed)
    )
    assert (req.trials, req.total_budget, req.pick) == (1, 10, "refit")
    assert "3 of the asked-for members did not run" in why
    given = TuneRequest(str(selected), "sinusoid:0", trials=2, strategy="meta+broad+random")
    assert resolve_request(given, ck) == (given, "strategy meta+broad+random was given")
    cfg = parse_sweep(
        {"meta": [str(selected)], "strategies": ["auto", "meta+fixed-default+refit"], "tasks": 1}
    )
    assert cfg.strategies == ("auto", "meta+fixed-default+refit")


def test_tune_runs_auto_and_saves_the_picked_model(
    ray_session: None, selected: Path, tmp_path: Path
) -> None:
    """``raymeta tune`` without a strategy runs the checkpoint's choice and says why; a soup
    pick writes the averaged weights, whose test loss is the report's."""
    from raymeta import load_model
    from raymeta.orchestration.tune.run import run_tune

    ck = load_meta_checkpoint(selected)
    sel = load_priors(ck).selection
    assert sel is not None
    rep = run_tune(
        meta=str(selected), task="sinusoid:0", trials=2, budget=16, out=tmp_path / "a", verbose=0
    )
    assert rep["strategy"] == sel["chosen"] and rep["strategy_why"].startswith("auto = ")
    assert rep["pick"]["rule"] == Strategy.parse(sel["chosen"]).pick
    rep = run_tune(
        meta=str(selected),
        task="sinusoid:0",
        trials=2,
        members_per_trial=2,
        budget=16,
        strategy="meta+broad+pbt+soup",
        out=tmp_path / "b",
        verbose=0,
    )
    assert rep["strategy"] == "meta+broad+pbt+soup" and rep["pick"]["members"] == 2
    task = make_family(ck.family).task("test", 0)
    model = load_model(tmp_path / "b")
    with torch.no_grad():
        got = torch.nn.functional.mse_loss(model(task.x_test), task.y_test)
    assert float(got) == pytest.approx(rep["best"]["test_loss"], rel=1e-5)


def test_a_refit_that_fits_train_plus_val_worse_keeps_the_snapshot(ckpt: MetaCheckpoint) -> None:
    task = _task64(ckpt)
    cand = ckpt.candidate()
    state = initial_state(cand.spec, cand.params, [0, 1], torch.float64)
    pop = Population(cand.spec, task.kind, cand.name, [{"lr": 0.01}] * 2, [0, 1], state, horizon=4)
    pop.train(task.x_train, task.y_train, 4)
    pop.evaluate(task.x_val, task.y_val)
    ok = final_pick(
        "refit",
        pop,
        task,
        lambda m: initial_state(cand.spec, cand.params, [m], torch.float64),
        True,
    )
    assert not ok.fallback and ok.extra_steps == 4
    m = pop.best_member()
    pop.best_configs[m] = {**pop.best_configs[m], "lr": 1e6}  # a config that diverges from init
    bad = final_pick(
        "refit",
        pop,
        task,
        lambda m: initial_state(cand.spec, cand.params, [m], torch.float64),
        True,
    )
    b = pop.best()
    assert bad.fallback and all(torch.equal(bad.params[k], b.params[k]) for k in b.params)
    assert bad.test == pop.score(b.params, task.x_test, task.y_test)


def test_selection_on_a_parquet_family_with_few_meta_val_tasks(tmp_path: Path) -> None:
    """A Parquet family has as many meta-val tasks as its file: selection reuses the priors'
    own tasks when there are no others, and says so."""
    from raymeta.core.train import MetaTrainConfig, meta_train
    from raymeta.tasks.parquet import write_tasks
    from raymeta.tasks.sinusoid import Sinusoid

    fam = Sinusoid(task_shots=8, val_size=6, test_size=20)
    counts = {"train": 6, "val": 3, "test": 2}
    tasks = [fam.task(s, i) for s, n in counts.items() for i in range(n)]
    splits = [s for s, n in counts.items() for _ in range(n)]
    data = tmp_path / "tasks.parquet"
    write_tasks(data, tasks, meta_split=splits)
    cfg = MetaTrainConfig(
        family="parquet",
        family_options={"path": str(data), "shots": 5, "queries": 5},
        steps=3,
        meta_batch=2,
        val_tasks=2,
    )
    ck = meta_train(cfg).to_checkpoint()
    pr = fit_priors(ck, n_tasks=3, n_configs=4, max_steps=6, refine_repeats=0, select_population=2)
    sel = pr.selection
    assert sel is not None and sel["tasks"] == 2 and sel["tasks_disjoint"] is False
    assert {r["label"] for r in sel["table"]} >= {"meta+fixed-default", "scratch+broad+pbt"}
    assert all(np.isfinite(r["mean"]) for r in sel["table"])
