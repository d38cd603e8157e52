"""Priors fit, ``raymeta tune`` and ``raymeta sweep`` on a checkpoint of every meta-learning
algorithm (issue 13: a Meta-SGD checkpoint's learned inner rates ``lr.*`` were stacked as if
they were weights by the priors evaluation; no test fitted priors on one)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import raymeta
from raymeta.core.checkpoint import Candidate, MetaCheckpoint
from raymeta.core.engine import ALGORITHMS
from raymeta.core.models import build_model
from raymeta.finetune.evaluate import evaluate_configs
from raymeta.finetune.fit import val_tasks
from raymeta.finetune.hparams import broad_space
from raymeta.priors import broad_prior
from raymeta.tasks import make_family


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A briefly meta-trained sinusoid checkpoint per algorithm, with priors fitted for 8-step
    members (``anytime``, as ``raymeta tune`` wants them)."""
    root = tmp_path_factory.mktemp("algos")
    out = {}
    for algo in ALGORITHMS:
        cfg = raymeta.MetaTrainConfig(algo=algo, steps=4, meta_batch=4, val_tasks=2, seed=1)
        path = raymeta.save_meta_checkpoint(root / algo, raymeta.meta_train(cfg).to_checkpoint())
        fit = raymeta.PriorFitConfig(
            n_tasks=2, n_configs=8, rounds=1, refine_repeats=1, max_steps=8, objective="anytime"
        )
        priors = raymeta.fit_priors(raymeta.load_meta_checkpoint(path), fit)
        raymeta.write_priors(path, priors.to_dict())
        out[algo] = path
    return out


def test_priors_fit_on_every_algorithm(checkpoints: dict[str, Path]) -> None:
    for algo, path in checkpoints.items():
        ckpt = raymeta.load_meta_checkpoint(path)
        priors = raymeta.load_priors(ckpt)
        assert len(priors.portfolio) >= 1, algo
        assert all(priors.space.validate(c) for c in priors.portfolio), algo
        assert np.isfinite(priors.info["broad_mean_regret"]), algo


def test_meta_sgd_learned_rates_are_not_fine_tuned_as_weights(
    checkpoints: dict[str, Path],
) -> None:
    """The priors evaluation of a Meta-SGD checkpoint equals that of the same weights without
    the ``lr.*`` tensors: fine-tuning starts from the model's parameters only."""
    ckpt = raymeta.load_meta_checkpoint(checkpoints["metasgd"])
    cand = ckpt.candidate()
    rates = [k for k in cand.params if k.startswith("lr.")]
    names = {k for k, _ in build_model(cand.spec).named_parameters()}
    assert rates and names and not set(rates) & names
    plain = MetaCheckpoint(
        ckpt.family,
        {cand.name: Candidate(cand.name, cand.spec, {k: cand.params[k] for k in names}, cand.info)},
    )
    tasks = val_tasks(make_family(ckpt.family), 2)
    prior = broad_prior(broad_space([cand.name], max_batch=len(tasks[0].x_train), max_steps=6))
    configs = prior.sample(6, np.random.default_rng(0))
    got = evaluate_configs(ckpt, tasks, configs, seed=3)
    want = evaluate_configs(plain, tasks, configs, seed=3)
    np.testing.assert_array_equal(got.curves, want.curves)
    assert np.isfinite(got.init_loss).all()


@pytest.mark.ray
def test_sweep_on_every_algorithm(
    ray_session: None, checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    cfg = raymeta.parse_sweep(
        {
            "name": "algos",
            "meta": [str(p) for p in checkpoints.values()],
            "strategies": ["meta+learned+pbt", "meta+fixed-default"],
            "tasks": 1,
            "population": 4,
            "steps_per_member": 8,
            "interval": 4,
            "fixed_steps": 4,
        }
    )
    got = raymeta.sweep(cfg, tmp_path / "results", progress=False)
    n = 2 * len(ALGORITHMS)  # every algorithm x two strategies
    assert (got["units"], got["ran"]) == (n, n)
    df = raymeta.read_results(tmp_path / "results", sweep="algos").to_pandas()
    finals = df[df.metric == "test_loss"]
    assert len(finals) == n and np.isfinite(finals.value).all()
    for algo in ALGORITHMS:
        assert (finals.strategy == f"meta+learned+pbt@{algo}").sum() == 1, algo


@pytest.mark.ray
@pytest.mark.slow  # the default run sweeps every algorithm (the same runner Tune trials call)
def test_tune_on_every_algorithm(
    ray_session: None, checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    """A real ``raymeta tune`` run per algorithm; the ANIL one with a Ray Tune scheduler object
    of the user's own (the Python API takes one where the CLI takes a name)."""
    from ray.tune.schedulers import FIFOScheduler

    for algo, path in checkpoints.items():
        if algo == "pretrain":  # its checkpoint tunes like any other (the sweep test runs it)
            continue
        scheduler = (
            FIFOScheduler() if algo == "anil" else ("pbt" if algo == "metasgd" else "random")
        )
        request = raymeta.TuneRequest(
            path,
            "sinusoid:3",
            trials=2,
            members_per_trial=2,
            budget=2 * 2 * 8,
            interval=4,
            scheduler=scheduler,
            out=tmp_path / algo,
        )
        rep = raymeta.tune(request, verbose=0)
        assert np.isfinite(rep["best"]["test_loss"]), algo
        assert 0 < rep["member_steps"] <= rep["budget"] == 32, algo
        assert 1 <= rep["best"]["config"]["steps"] <= rep["steps_per_member"] == 8, algo
        weights = torch.load(tmp_path / algo / "best_model.pt", weights_only=True)
        cand = raymeta.load_meta_checkpoint(path).candidate()
        assert set(weights) == {k for k, _ in build_model(cand.spec).named_parameters()}, algo
        if algo == "anil":
            assert rep["strategy"] == "meta+learned+FIFOScheduler"
