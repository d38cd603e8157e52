"""Search space, Prior sampling/density, Priors JSON, regret and greedy portfolio (no fitting)."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from scipy import stats

from raymeta.errors import CheckpointError, ConfigError
from raymeta.finetune.hparams import broad_space
from raymeta.priors import (
    Categorical,
    CategoricalDist,
    Float,
    Int,
    NumericDist,
    Prior,
    Priors,
    SearchSpace,
    broad_prior,
    greedy_portfolio,
    normalised_regret,
)
from raymeta.priors.portfolio import portfolio_step


def space() -> SearchSpace:
    return broad_space(["mlp", "conv4"], max_batch=25, max_steps=100)


def learned(sp: SearchSpace) -> Prior:
    return Prior(
        sp,
        {
            "lr": NumericDist(0.9, 0.6, 0.08),
            "weight_decay": NumericDist(0.5, 0.0, 0.2),
            "steps": NumericDist(0.85, 1.0, 0.05),
            "batch_size": NumericDist(0.7, 0.3, 0.3),
            "optimizer": CategoricalDist((0.2, 0.8)),
            "adapt": CategoricalDist((0.9, 0.1)),
            "model": CategoricalDist((0.25, 0.75)),
        },
    )


@pytest.mark.parametrize("which", ["broad", "learned"])
def test_samples_stay_in_bounds_with_right_types(which: str) -> None:
    sp = space()
    pr = broad_prior(sp) if which == "broad" else learned(sp)
    configs = pr.sample(2000, np.random.default_rng(0))
    for c in configs:
        assert sp.validate(c) == c
        assert (
            isinstance(c["steps"], int)
            and isinstance(c["batch_size"], int)
            and isinstance(c["lr"], float)
        )
    assert min(c["steps"] for c in configs) >= 1 and max(c["steps"] for c in configs) <= 100


@pytest.mark.parametrize("which", ["broad", "learned"])
def test_log_prob_finite_on_own_samples_and_minus_inf_outside(which: str) -> None:
    sp = space()
    pr = broad_prior(sp) if which == "broad" else learned(sp)
    for c in pr.sample(300, np.random.default_rng(1)):
        assert math.isfinite(pr.log_prob(c))
    c = pr.sample(1, np.random.default_rng(2))[0]
    assert pr.log_prob(c | {"lr": 2.0}) == -math.inf
    assert pr.log_prob(c | {"optimizer": "rmsprop"}) == -math.inf
    with pytest.raises(ConfigError):
        pr.log_prob({k: v for k, v in c.items() if k != "lr"})


def test_broad_log_prob_is_uniform_on_unit_coordinates() -> None:
    sp = space()
    c = broad_prior(sp).sample(1, np.random.default_rng(0))[0]
    # numeric densities are 1 on [0, 1]; categoricals 1/2, 1/2, 1/2
    assert broad_prior(sp).log_prob(c) == pytest.approx(3 * math.log(0.5))


def test_numeric_dist_matches_scipy_truncnorm_mixture() -> None:
    """Independent reference: scipy's truncated normal (KS test on samples, pdf values)."""
    d = NumericDist(weight=0.7, mean=0.8, std=0.15)
    p = Float("x", 0.0, 1.0)
    pr = Prior(SearchSpace([p]), {"x": d})
    xs = np.array([c["x"] for c in pr.sample(4000, np.random.default_rng(3))])
    a, b = (0 - d.mean) / d.std, (1 - d.mean) / d.std
    tn = stats.truncnorm(a, b, loc=d.mean, scale=d.std)

    def cdf(x: np.ndarray) -> np.ndarray:
        return d.weight * tn.cdf(x) + (1 - d.weight) * np.clip(x, 0, 1)

    assert stats.kstest(xs, cdf).pvalue > 1e-3
    for u in (0.0, 0.3, 0.8, 1.0):
        assert math.exp(d.log_density(u)) == pytest.approx(
            d.weight * tn.pdf(u) + 1 - d.weight, rel=1e-9
        )


def test_categorical_frequencies_follow_probabilities() -> None:
    sp = SearchSpace([Categorical("c", ("a", "b", "c"))])
    pr = Prior(sp, {"c": CategoricalDist((0.1, 0.6, 0.3))})
    vals = [s["c"] for s in pr.sample(6000, np.random.default_rng(4))]
    freq = [vals.count(ch) / len(vals) for ch in "abc"]
    assert freq == pytest.approx([0.1, 0.6, 0.3], abs=0.02)


def test_sampling_is_reproducible_for_a_seed() -> None:
    pr = learned(space())
    assert pr.sample(20, np.random.default_rng(7)) == pr.sample(20, np.random.default_rng(7))
    assert pr.sample(20, np.random.default_rng(7)) != pr.sample(20, np.random.default_rng(8))


def test_perturb_stays_in_bounds_moves_and_keeps_extra_keys() -> None:
    sp = space()
    pr = learned(sp)
    rng = np.random.default_rng(5)
    base = pr.sample(50, rng)
    moved = 0
    for c in base:
        new = pr.perturb(c | {"seed": 3}, rng, resample_p=0.25)
        assert new["seed"] == 3
        assert sp.validate(new) == {k: new[k] for k in sp.names()}
        moved += new["lr"] != c["lr"]
    assert moved == len(base)
    c = base[0]
    assert pr.perturb(c, np.random.default_rng(9)) == pr.perturb(c, np.random.default_rng(9))
    # never resampling: categoricals kept, numeric ones move
    kept = pr.perturb(c, np.random.default_rng(1), resample_p=0.0)
    assert (
        kept["optimizer"] == c["optimizer"]
        and kept["model"] == c["model"]
        and kept["steps"] != c["steps"]
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda: Float("lr", 1.0, 1.0),
        lambda: Float("lr", 2.0, 1.0),
        lambda: Float("lr", 0.0, 1.0, log=True),
        lambda: Float("lr", -1.0, 1.0, log=True),
        lambda: Int("steps", 5, 5),
        lambda: Int("steps", 0, 10, log=True),
        lambda: Float("lr", 0.0, math.inf),
        lambda: Categorical("c", ()),
        lambda: SearchSpace([Float("a", 0, 1), Float("a", 0, 2)]),
        lambda: NumericDist(1.5, 0.5, 0.1),
        lambda: CategoricalDist((0.5, 0.6)),
    ],
)
def test_bad_bounds_and_dists_are_config_errors(make) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError):
        make()


def test_bad_bounds_from_json_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="low < high"):
        SearchSpace.from_dict({"params": [{"name": "lr", "type": "float", "low": 1, "high": 0.1}]})
    with pytest.raises(ConfigError, match="> 0"):
        SearchSpace.from_dict(
            {"params": [{"name": "lr", "type": "float", "low": 0, "high": 1, "log": True}]}
        )


def make_priors() -> Priors:
    sp = space()
    pr = learned(sp)
    port = pr.sample(3, np.random.default_rng(0))
    return Priors(
        1, sp, pr, port, {"mlp": 0.25, "conv4": 0.75}, {"n_tasks": 3, "note": [0.1, 1 / 3]}
    )


def test_priors_json_round_trip_is_exact() -> None:
    p = make_priors()
    d = json.loads(json.dumps(p.to_dict()))
    back = Priors.from_dict(d)
    assert back.to_dict() == p.to_dict()
    assert back.learned == p.learned and back.space == p.space and back.portfolio == p.portfolio
    assert back.prior("broad") == broad_prior(p.space)
    with pytest.raises(ConfigError):
        back.prior("fancy")


def test_priors_unknown_version_and_malformed_are_checkpoint_errors() -> None:
    d = make_priors().to_dict()
    with pytest.raises(CheckpointError, match="version"):
        Priors.from_dict(d | {"version": 99})
    with pytest.raises(CheckpointError):
        Priors.from_dict(d | {"format": "other"})
    bad = json.loads(json.dumps(d))
    bad["learned"]["dists"]["lr"]["std"] = -1
    with pytest.raises(CheckpointError, match="malformed"):
        Priors.from_dict(bad)
    bad = json.loads(json.dumps(d))
    bad["portfolio"][0]["lr"] = 50.0
    with pytest.raises(CheckpointError, match="outside"):
        Priors.from_dict(bad)


def test_normalised_regret_caps_and_scales_per_task() -> None:
    losses = np.array([[1.0, 3.0, np.nan, 100.0], [10.0, 20.0, 30.0, 40.0]])
    r = normalised_regret(losses, cap=np.array([[5.0], [40.0]]))
    # task 0: capped to [1, 3, 5, 5] -> [0, .5, 1, 1]; task 1: [0, 1/3, 2/3, 1]
    np.testing.assert_allclose(r, [[0, 0.5, 1, 1], [0, 1 / 3, 2 / 3, 1]])
    np.testing.assert_allclose(normalised_regret(np.array([[2.0, 2.0]])), [[0.0, 0.0]])


def brute_best_next(r: np.ndarray, chosen: list[int]) -> int:
    best, best_score = -1, math.inf
    for j in range(r.shape[1]):
        if j in chosen:
            continue
        score = float(np.mean([min(r[t, i] for i in [*chosen, j]) for t in range(r.shape[0])]))
        if score < best_score - 1e-12:
            best, best_score = j, score
    return best


def test_greedy_portfolio_steps_equal_brute_force() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        r = rng.random((5, 7))
        chosen = greedy_portfolio(r, 4)
        for k in range(4):
            assert chosen[k] == brute_best_next(r, chosen[:k])
        assert chosen[0] == int(np.argmin(r.mean(axis=0)))
        # with k = 1 greedy is optimal: it equals the best single config over all subsets of size 1
        best_single = min(
            itertools.combinations(range(7), 1), key=lambda s: r[:, s].min(axis=1).mean()
        )
        assert [chosen[0]] == list(best_single)
    assert portfolio_step(np.array([[0.0, 1.0], [1.0, 0.0]]), np.full(2, np.inf), set()) == 0


def test_greedy_portfolio_complements_first_choice() -> None:
    # config 0 is decent on every task; configs 1 and 2 are each perfect on half the tasks
    r = np.array([[0.3, 0.0, 1.0], [0.3, 0.0, 1.0], [0.3, 1.0, 0.0], [0.3, 1.0, 0.0]])
    assert greedy_portfolio(r, 3) == [0, 1, 2]
    assert greedy_portfolio(r, 10) == [0, 1, 2]
