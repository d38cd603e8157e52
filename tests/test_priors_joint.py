"""The learned prior's joint component: best-of-n weights against brute force, sampling, density
against scipy, JSON round trip (and version-1 files), bad input."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from scipy.stats import truncnorm

from raymeta.errors import CheckpointError, ConfigError
from raymeta.finetune.hparams import broad_space
from raymeta.priors import Priors, broad_prior
from raymeta.priors.fit import fit_from_table
from raymeta.priors.joint import Joint, best_of_n_weights, expected_best_of_n
from raymeta.priors.prior import Prior
from raymeta.priors.table import EvalTable

SPACE = broad_space(["mlp"], max_batch=5, max_steps=100)
CENTRES = (
    {
        "lr": 0.05,
        "optimizer": "adam",
        "weight_decay": 1e-4,
        "steps": 80,
        "batch_size": 4,
        "adapt": "head",
        "model": "mlp",
    },
    {
        "lr": 0.002,
        "optimizer": "sgd",
        "weight_decay": 1e-6,
        "steps": 5,
        "batch_size": 2,
        "adapt": "all",
        "model": "mlp",
    },
)


def joint_prior(weight: float = 0.9, keep: float = 0.95) -> Prior:
    return Prior(SPACE, joint=Joint(weight, 0.03, keep, CENTRES, (0.7, 0.3)))


def brute_best_of_n(regret: np.ndarray, probs: np.ndarray, n: int) -> float:
    """Enumerate every ordered n-tuple of configs (independent of the sorted-CDF formula)."""
    total = 0.0
    for tup in itertools.product(range(regret.shape[1]), repeat=n):
        p = float(np.prod(probs[list(tup)]))
        total += p * regret[:, list(tup)].min(axis=1).mean()
    return total


def test_expected_best_of_n_equals_brute_force_enumeration() -> None:
    rng = np.random.default_rng(0)
    regret = rng.random((3, 4))
    regret[0, 1] = regret[0, 2]  # a tie
    probs = rng.dirichlet(np.ones(4))
    for n in (1, 2, 3):
        assert expected_best_of_n(regret, probs, n) == pytest.approx(
            brute_best_of_n(regret, probs, n), rel=1e-12
        )


def test_best_of_n_weights_spread_over_complementary_configs() -> None:
    # config 0 is perfect on tasks 0-1, config 1 on tasks 2-3, config 2 is mediocre everywhere
    regret = np.array([[0.0, 1.0, 0.3], [0.0, 1.0, 0.3], [1.0, 0.0, 0.3], [1.0, 0.0, 0.3]])
    w1, w4 = best_of_n_weights(regret, 1), best_of_n_weights(regret, 4)
    assert w1[2] > 0.9  # one draw: the safe average config
    assert w4[0] > 0.4 and w4[1] > 0.4  # four draws: cover both kinds of task
    uniform = np.full(3, 1 / 3)
    for n, w in ((1, w1), (4, w4)):
        assert expected_best_of_n(regret, w, n) < expected_best_of_n(regret, uniform, n)


def test_joint_samples_in_bounds_finite_log_prob_reproducible() -> None:
    pr = joint_prior()
    a = pr.sample(300, np.random.default_rng(4))
    assert a == pr.sample(300, np.random.default_rng(4))
    for c in a:
        assert SPACE.validate(c) == c
        assert math.isfinite(pr.log_prob(c))
    # most samples sit near a centre: optimizer/adapt pairs follow the centres
    pairs = [(c["optimizer"], c["adapt"]) for c in a]
    assert pairs.count(("adam", "head")) > 0.5 * len(a)
    assert pairs.count(("sgd", "all")) > 0.15 * len(a)
    lr_units = np.array([SPACE["lr"].to_unit(c["lr"]) for c in a])  # type: ignore[union-attr]
    near = np.abs(lr_units - SPACE["lr"].to_unit(0.05)) < 0.1  # type: ignore[union-attr]
    assert near.mean() > 0.55


def test_joint_log_prob_matches_scipy_reference() -> None:
    jt = Joint(0.8, 0.05, 0.9, CENTRES[:1], (1.0,))
    pr = Prior(SPACE, joint=jt)
    c = dict(CENTRES[0]) | {"lr": 0.03, "steps": 60, "optimizer": "sgd"}
    kern = 0.0
    for name in ("lr", "weight_decay", "steps", "batch_size"):
        p = SPACE[name]
        mu, u = p.to_unit(CENTRES[0][name]), p.to_unit(c[name])  # type: ignore[union-attr]
        a, b = (0 - mu) / 0.05, (1 - mu) / 0.05
        kern += truncnorm.logpdf(u, a, b, loc=mu, scale=0.05)
    # categoricals: optimizer differs from the centre (0.1 x 1/2), adapt and model are kept
    cat = math.log(0.1 * 0.5) + math.log(0.9 + 0.1 * 0.5) + math.log(1.0)
    broad = math.log(0.5) * 2  # factorised part: uniform units (density 1), two 2-way choices
    ref = math.log(0.8 * math.exp(kern + cat) + 0.2 * math.exp(broad))
    assert pr.log_prob(c) == pytest.approx(ref, rel=1e-9)


def test_perturb_with_joint_stays_in_bounds() -> None:
    pr = joint_prior()
    rng = np.random.default_rng(1)
    for c in pr.sample(100, rng):
        new = pr.perturb(c | {"extra": 1}, rng)
        assert new["extra"] == 1
        assert SPACE.validate(new) == {k: new[k] for k in SPACE.names()}


def test_joint_json_round_trip_exact_and_version_1_still_loads() -> None:
    pr = joint_prior()
    p = Priors(2, SPACE, pr, [dict(CENTRES[0])], {"mlp": 1.0}, {"n": 1})
    d = json.loads(json.dumps(p.to_dict()))
    back = Priors.from_dict(d)
    assert back.learned == pr and back.to_dict() == p.to_dict()
    v1 = json.loads(json.dumps(Priors(1, SPACE, broad_prior(SPACE), [], {"mlp": 1.0}).to_dict()))
    assert "joint" not in v1["learned"]
    assert Priors.from_dict(v1).learned.joint is None
    with pytest.raises(CheckpointError, match="version"):
        Priors.from_dict(d | {"version": 4})


@pytest.mark.parametrize(
    "change",
    [
        {"bandwidth": 0.0},
        {"weight": 1.5},
        {"probs": [0.5, 0.6]},
        {"probs": [1.0]},
        {"centres": [dict(CENTRES[0]) | {"lr": 5.0}, dict(CENTRES[1])]},
        {"centres": "nope"},
    ],
)
def test_malformed_joint_is_one_line_checkpoint_error(change: dict) -> None:
    d = json.loads(json.dumps(Priors(2, SPACE, joint_prior(), [], {"mlp": 1.0}).to_dict()))
    d["learned"]["joint"] |= change
    with pytest.raises(CheckpointError) as exc:
        Priors.from_dict(d)
    assert "\n" not in str(exc.value)


def test_joint_constructor_rejects_bad_values() -> None:
    with pytest.raises(ConfigError):
        Joint(0.5, 0.03, 2.0, CENTRES, (0.5, 0.5))


def test_fit_puts_the_joint_on_the_configs_that_win() -> None:
    configs = broad_prior(SPACE).sample(12, np.random.default_rng(0))
    final = np.full((6, 12), 1.0)
    final[:3, 4] = 0.0  # config 4 wins tasks 0-2, config 9 tasks 3-5
    final[3:, 9] = 0.0
    table = EvalTable(final[:, :, None], [0], np.full((6, 12), 2.0))
    prior, _, _, info = fit_from_table(SPACE, configs, table, 0.2, 2, best_of=8)
    jt = prior.joint
    assert jt is not None and info["best_of"] == 8
    assert jt.weight == pytest.approx(6 / 7.5)
    assert sorted(jt.centres, key=str) == sorted([configs[4], configs[9]], key=str)
    assert jt.probs == pytest.approx((0.5, 0.5), abs=0.05)
    plain, *_ = fit_from_table(SPACE, configs, table, 0.2, 2, best_of=None)
    assert plain.joint is None and plain.dists == prior.dists
