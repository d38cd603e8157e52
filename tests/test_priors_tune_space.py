"""Priors -> Ray Tune conversions, checked with Tune's own variant generator and PBT explore
(no ray.init needed)."""

from __future__ import annotations

import random

import numpy as np
from ray.tune.schedulers.pbt import _explore
from ray.tune.search.sample import Categorical as TuneCategorical
from ray.tune.search.sample import Domain, Float, Integer
from ray.tune.search.variant_generator import generate_variants

from raymeta.finetune.hparams import broad_space
from raymeta.orchestration.tune.space import (
    clip_explore,
    hyperparam_mutations,
    param_space,
    points_to_evaluate,
)
from raymeta.priors import CategoricalDist, NumericDist, Prior, broad_prior


def learned() -> Prior:
    sp = broad_space(["mlp", "wide"], max_batch=25, max_steps=100)
    return Prior(
        sp,
        {
            "lr": NumericDist(0.9, 0.6, 0.05),
            "steps": NumericDist(0.9, 1.0, 0.05),
            "optimizer": CategoricalDist((0.1, 0.9)),
            "model": CategoricalDist((0.8, 0.2)),
        },
    )


def resolve(space: dict, n: int, seed: int) -> list[dict]:
    out = []
    for i in range(n):
        _, cfg = next(generate_variants(space, random_state=np.random.default_rng(seed + i)))
        out.append(cfg)
    return out


def test_broad_prior_maps_to_native_tune_domains() -> None:
    sp = broad_space(["mlp"], max_batch=25)
    ps = param_space(broad_prior(sp))
    assert isinstance(ps["lr"], Float) and type(ps["lr"].get_sampler()).__name__ == "_LogUniform"
    assert (
        isinstance(ps["steps"], Integer) and ps["steps"].upper == 101
    )  # Tune's upper bound is exclusive
    assert isinstance(ps["optimizer"], TuneCategorical) and ps["optimizer"].categories == [
        "sgd",
        "adam",
    ]
    for cfg in resolve(ps, 200, 0):
        assert sp.validate(cfg) == cfg


def test_learned_prior_domains_resolve_in_bounds_and_follow_the_prior() -> None:
    pr = learned()
    ps = param_space(pr, fixed={"model": "mlp", "extra": 5})
    assert all(isinstance(ps[n], Domain) for n in pr.space.names() if n != "model")
    assert ps["model"] == "mlp" and ps["extra"] == 5
    cfgs = resolve(ps, 300, 1)
    for cfg in cfgs:
        assert pr.space.validate(cfg) == {k: cfg[k] for k in pr.space.names()}
    assert np.mean([c["optimizer"] == "adam" for c in cfgs]) > 0.8
    # lr mass is concentrated near unit coordinate 0.6 (1e-4 * 1e4**0.6 = 0.025)
    assert 0.01 < np.median([c["lr"] for c in cfgs]) < 0.06
    assert np.median([c["steps"] for c in cfgs]) > 60
    # Tune's random_state drives the prior's own sampler: same seed, same configs
    assert resolve(ps, 5, 7) == resolve(ps, 5, 7)


def test_hyperparam_mutations_work_with_pbt_explore() -> None:
    pr = learned()
    muts = hyperparam_mutations(pr)
    assert "model" not in muts
    assert muts["optimizer"] == ["sgd", "adam"] and muts["adapt"] == ["all", "head"]
    assert isinstance(muts["lr"], Domain) and isinstance(muts["weight_decay"], Domain)
    random.seed(0)
    explore = clip_explore(pr)
    cfg = pr.sample(1, np.random.default_rng(0))[0]
    for _ in range(200):
        new, _ops = _explore(cfg, muts, 0.25, (0.8, 1.2), explore)
        assert pr.space.validate(new) == new
        cfg = new


def test_points_to_evaluate_are_plain_python() -> None:
    pts = points_to_evaluate([{"lr": np.float64(0.1), "steps": np.int64(5), "optimizer": "adam"}])
    assert pts == [{"lr": 0.1, "steps": 5, "optimizer": "adam"}]
    assert type(pts[0]["lr"]) is float and type(pts[0]["steps"]) is int
