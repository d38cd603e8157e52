"""The ``anytime`` objective: configs scored as members of a population run (every config trains
the whole horizon; score = best val loss so far, averaged over every step of the horizon)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from raymeta.cli.main import main
from raymeta.core.checkpoint import MetaCheckpoint, priors_file
from raymeta.errors import ConfigError
from raymeta.finetune import fit_priors
from raymeta.finetune.evaluate import evaluate_configs
from raymeta.finetune.fit import anchor_configs, val_tasks
from raymeta.finetune.hparams import broad_space
from raymeta.priors import broad_prior
from raymeta.priors.table import EvalTable
from raymeta.tasks import make_family


def looped_anytime(curve: list[float], steps: list[int]) -> float:
    """Independent reference: walk every step 1..H, holding the latest grid value, and keep
    the best finite loss so far."""
    horizon, best, total = steps[-1], math.inf, 0.0
    for step in range(1, horizon + 1):
        i = max(k for k, s in enumerate(steps) if s <= step)
        if math.isfinite(curve[i]):
            best = min(best, curve[i])
        total += best
    return total / horizon if math.isfinite(total) else math.nan


def test_anytime_score_matches_a_looped_reference() -> None:
    rng = np.random.default_rng(0)
    curves = rng.uniform(0.1, 2.0, size=(3, 5, 6))
    curves[0, 1, 3] = np.nan  # diverged mid-run: the best so far carries over
    curves[1, 2, 1:3] = np.inf  # no finite loss at the first grid steps: NaN score
    curves[2, 4, 1:] = np.nan  # never finite
    t = EvalTable(curves, [0, 1, 2, 5, 10, 20], curves[:, :, 0].copy(), "anytime")
    for i in range(3):
        for j in range(5):
            ref = looped_anytime(list(curves[i, j]), t.steps)
            got = float(t.score[i, j])
            assert (math.isnan(ref) and math.isnan(got)) or got == pytest.approx(ref, rel=1e-12)
    assert np.array_equal(
        EvalTable(curves, t.steps, t.init_loss).score, curves[:, :, -1], equal_nan=True
    )


def test_tables_of_different_objectives_do_not_concat() -> None:
    c = np.ones((2, 3, 4))
    with pytest.raises(ConfigError, match="objective"):
        EvalTable(c, [0, 1, 2, 5], c[:, :, 0]).concat(
            EvalTable(c, [0, 1, 2, 5], c[:, :, 0], "anytime")
        )
    with pytest.raises(ConfigError, match="unknown objective"):
        EvalTable(c, [0, 1, 2, 5], c[:, :, 0], "best")


def test_anytime_evaluation_trains_every_config_the_whole_horizon(ckpt: MetaCheckpoint) -> None:
    tasks = val_tasks(make_family(ckpt.family), 2)
    space = broad_space(["mlp"], max_batch=int(tasks[0].x_train.shape[0]), max_steps=6)
    configs = broad_prior(space).sample(4, np.random.default_rng(0))
    configs = [{**c, "steps": s, "lr": 0.05} for c, s in zip(configs, (1, 2, 6, 3), strict=True)]
    own = evaluate_configs(ckpt, tasks, configs, seed=3, grid_max=6)
    anytime = evaluate_configs(ckpt, tasks, configs, seed=3, grid_max=6, objective="anytime")
    horizon = evaluate_configs(ckpt, tasks, [{**c, "steps": 6} for c in configs], seed=3)
    np.testing.assert_allclose(anytime.curves, horizon.curves, rtol=1e-6)
    # with "final" the 1-step config stops after step 1; with "anytime" it keeps training
    assert np.allclose(own.curves[:, 0, 1:], own.curves[:, 0, 1:2])
    assert not np.allclose(anytime.curves[:, 0, 1:], anytime.curves[:, 0, 1:2])
    for i in range(len(tasks)):
        for j in range(len(configs)):
            ref = looped_anytime(list(anytime.curves[i, j]), anytime.steps)
            assert anytime.score[i, j] == pytest.approx(ref, rel=1e-12)


def test_fit_for_population_runs_uses_the_horizon(ckpt: MetaCheckpoint) -> None:
    kw = {"n_tasks": 3, "n_configs": 8, "max_steps": 6, "objective": "anytime", "seed": 1}
    a, b = fit_priors(ckpt, **kw), fit_priors(ckpt, **kw)  # type: ignore[arg-type]
    assert a.info["objective"] == "anytime"
    assert a.portfolio == b.portfolio
    assert all(c["steps"] == 6 for c in a.portfolio)
    for c in a.learned.sample(20, np.random.default_rng(0)):
        assert a.space.validate(c) == {k: c[k] for k in a.space.names()}
    with pytest.raises(ConfigError, match="objective must be one of"):
        fit_priors(ckpt, n_tasks=3, n_configs=8, objective="best")


def test_cli_objective(ckpt_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    d = tmp_path / "c"
    shutil.copytree(ckpt_dir, d)
    with pytest.raises(SystemExit) as e:
        main(["priors", "fit", "--meta", str(d), "--objective", "best"])
    assert e.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
    assert priors_file(d) is None
    args = ["--tasks", "3", "--configs", "4", "--max-steps", "4", "--objective", "anytime"]
    assert main(["priors", "fit", "--meta", str(d), *args]) == 0
    pf = priors_file(d)
    assert pf is not None and json.loads(pf.read_text())["info"]["objective"] == "anytime"


def test_anchor_configs_are_the_standard_full_fine_tunes(ckpt: MetaCheckpoint) -> None:
    space = broad_space(["mlp"], max_batch=10, max_steps=7)
    got = anchor_configs(space, ckpt, 7)
    inner = float(ckpt.candidate().info["inner_lr"])
    assert [(c["optimizer"], c["lr"]) for c in got] == [
        ("sgd", inner),
        ("adam", 1e-3),
        ("adam", 3e-3),
        ("adam", 1e-2),
    ]
    for c in got:
        assert space.validate(c) == c
        assert (c["adapt"], c["batch_size"], c["steps"], c["model"]) == ("all", 10, 7, "mlp")


@pytest.mark.parametrize("objective", ["final", "anytime"])
def test_both_objectives_open_with_the_standard_fine_tunes(
    ckpt: MetaCheckpoint, objective: str
) -> None:
    """A quarter of the first round is the anchors, for ``final`` fits too, so the fit's table
    holds the default fine-tune (SGD at the meta-training inner lr, all layers) and a portfolio
    can keep it. A portfolio as large as the fit is every evaluated config: the anchors are
    among them (before, a ``final`` fit drew all 16 from the broad space)."""
    kw = {"n_tasks": 2, "n_configs": 16, "rounds": 1, "refine_repeats": 0, "max_steps": 4}
    pr = fit_priors(ckpt, seed=1, select_tasks=0, objective=objective, portfolio_size=16, **kw)  # type: ignore[arg-type]
    assert pr.info["anchors"] == 4 and pr.info["rounds"] == [16]
    assert len(pr.portfolio) == 16
    for anchor in anchor_configs(pr.space, ckpt, 4):
        assert anchor in pr.portfolio
    # anchors=False (--no-anchors): the whole round is broad draws, none of them an anchor
    bare = fit_priors(
        ckpt, seed=1, select_tasks=0, objective=objective, portfolio_size=16, anchors=False, **kw
    )  # type: ignore[arg-type]
    assert bare.info["anchors"] == 0 and len(bare.portfolio) == 16
    assert not any(a in bare.portfolio for a in anchor_configs(pr.space, ckpt, 4))
