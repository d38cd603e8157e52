"""Conditional priors (numeric sub-priors per optimizer) and the fitting helpers behind them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from raymeta.errors import CheckpointError, ConfigError
from raymeta.finetune.hparams import broad_space
from raymeta.priors import CategoricalDist, Conditional, NumericDist, Prior, Priors, broad_prior
from raymeta.priors.fit import fit_from_table, fit_numeric, round_sizes
from raymeta.priors.table import EvalTable

SGD = NumericDist(0.95, 0.85, 0.05)  # high learning rates
ADAM = NumericDist(0.95, 0.3, 0.05)  # low learning rates


def cond_prior() -> Prior:
    sp = broad_space(["mlp"], max_batch=10, max_steps=100)
    return Prior(
        sp,
        {"lr": NumericDist(0.9, 0.6, 0.3), "optimizer": CategoricalDist((0.4, 0.6))},
        Conditional("optimizer", {"sgd": {"lr": SGD}, "adam": {"lr": ADAM, "steps": SGD}}),
    )


def truncmix_cdf(d: NumericDist) -> object:
    tn = stats.truncnorm((0 - d.mean) / d.std, (1 - d.mean) / d.std, loc=d.mean, scale=d.std)
    return lambda x: d.weight * tn.cdf(x) + (1 - d.weight) * np.clip(x, 0, 1)


def test_children_follow_the_sub_prior_of_the_sampled_parent() -> None:
    """Independent reference: scipy's truncated-normal mixture per optimizer (KS tests)."""
    pr = cond_prior()
    configs = pr.sample(4000, np.random.default_rng(0))
    lr = pr.space["lr"]
    for c in configs:
        assert pr.space.validate(c) == c
    for opt, d in (("sgd", SGD), ("adam", ADAM)):
        us = np.array([lr.to_unit(c["lr"]) for c in configs if c["optimizer"] == opt])  # type: ignore[union-attr]
        assert stats.kstest(us, truncmix_cdf(d)).pvalue > 1e-3
    share_sgd = np.mean([c["optimizer"] == "sgd" for c in configs])
    assert share_sgd == pytest.approx(0.4, abs=0.03)
    # without a sub-prior for sgd, steps falls back to the marginal (broad here: uniform)
    st = pr.space["steps"]
    us = np.array([st.to_unit(c["steps"]) for c in configs if c["optimizer"] == "sgd"])  # type: ignore[union-attr]
    assert np.mean(us > 0.5) == pytest.approx(0.5, abs=0.05)


def test_log_prob_uses_the_sub_prior_and_is_finite_on_own_samples() -> None:
    pr = cond_prior()
    for c in pr.sample(200, np.random.default_rng(1)):
        assert math.isfinite(pr.log_prob(c))
    c = pr.sample(1, np.random.default_rng(2))[0] | {"optimizer": "sgd"}
    u = pr.space["lr"].to_unit(c["lr"])  # type: ignore[union-attr]
    # optimizer 0.4 * sgd's lr sub-prior * adapt 1/2; steps etc. are uniform (density 1)
    by_hand = math.log(0.4) + SGD.log_density(u) + math.log(0.5)
    assert pr.log_prob(c) == pytest.approx(by_hand, rel=1e-12)


def test_conditional_sampling_is_reproducible_and_consumes_space_order() -> None:
    pr = cond_prior()
    a = pr.sample(30, np.random.default_rng(7))
    assert a == pr.sample(30, np.random.default_rng(7))
    # same uniforms as a prior without the conditional: only the children's values differ
    plain = Prior(pr.space, pr.dists).sample(30, np.random.default_rng(7))
    assert [c["optimizer"] for c in a] == [c["optimizer"] for c in plain]
    assert [c["batch_size"] for c in a] == [c["batch_size"] for c in plain]


def test_perturb_moves_children_within_the_sub_prior() -> None:
    pr = cond_prior()
    rng = np.random.default_rng(3)
    for c in pr.sample(100, rng):
        new = pr.perturb(c, rng, resample_p=0.3)
        assert pr.space.validate(new) == new
        if new["optimizer"] == c["optimizer"] == "sgd" and new["lr"] != c["lr"]:
            du = abs(pr.space["lr"].to_unit(new["lr"]) - pr.space["lr"].to_unit(c["lr"]))  # type: ignore[union-attr]
            assert du <= 1.0


def test_conditional_json_round_trip_is_exact() -> None:
    pr = cond_prior()
    p = Priors(1, pr.space, pr, pr.sample(2, np.random.default_rng(0)), {"mlp": 1.0}, {})
    d = json.loads(json.dumps(p.to_dict()))
    assert d["learned"]["conditional"]["on"] == "optimizer"
    back = Priors.from_dict(d)
    assert back.learned == pr and back.to_dict() == p.to_dict()
    assert back.learned.conditional is not None
    assert back.learned.conditional.dists["adam"]["steps"] == SGD


@pytest.mark.parametrize(
    "cond",
    [
        {"on": "lr", "dists": {}},
        {"on": "optimizer", "dists": {"rmsprop": {"lr": SGD.to_dict()}}},
        {"on": "optimizer", "dists": {"sgd": {"adapt": {"probs": [0.5, 0.5]}}}},
        {"on": "optimizer", "dists": {"sgd": {"lr": {"weight": 2.0, "mean": 0.5, "std": 0.1}}}},
        {"on": "optimizer", "dists": {"sgd": {"nope": SGD.to_dict()}}},
        {"dists": {}},
    ],
)
def test_malformed_conditional_is_one_line_error(cond: dict) -> None:
    pr = cond_prior()
    d = json.loads(json.dumps(Priors(1, pr.space, pr, [], {}, {}).to_dict()))
    d["learned"]["conditional"] = cond
    with pytest.raises(CheckpointError) as info:
        Priors.from_dict(d)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError):
        Prior.from_dict(d["learned"])


def test_fit_numeric_shrinkage_is_a_pseudo_count() -> None:
    u = np.array([0.4, 0.5, 0.6])
    for n, s in ((1, 1.0), (32, 1.0), (32, 4.0)):
        d = fit_numeric(u, n, s)
        assert d.weight == pytest.approx(n / (n + s))
        assert d.mean == pytest.approx(0.5) and d.std == pytest.approx(np.std(u))
    assert fit_numeric(np.full(5, 0.3), 10).std >= 0.01  # never collapses


def test_round_sizes() -> None:
    assert round_sizes(64, 2) == [32, 32]
    assert round_sizes(65, 3) == [23, 21, 21]
    assert round_sizes(6, 2) == [6]  # too few configs for two rounds of >= 4
    assert round_sizes(8, 1) == [8]


def test_fit_recovers_an_optimizer_dependent_learning_rate() -> None:
    """Synthetic table: sgd wants lr near 1e-1, adam near 1e-3 (loss = distance in log10 lr)."""
    sp = broad_space(["mlp"], max_batch=10, max_steps=100)
    rng = np.random.default_rng(0)
    configs = broad_prior(sp).sample(400, rng)
    target = {"sgd": -1.0, "adam": -3.0}
    loss = np.array(
        [[abs(math.log10(c["lr"]) - target[c["optimizer"]]) for c in configs] for _ in range(8)]
    )
    loss += rng.normal(0, 0.01, loss.shape)
    table = EvalTable(loss[:, :, None], [100], np.full(loss.shape, 10.0))
    prior, port, _, info = fit_from_table(sp, configs, table, 0.1, 4, shrink=1.0)
    assert prior.conditional is not None and info["condition_on"] == "optimizer"
    lr = sp["lr"]
    for opt, t in target.items():
        d = prior.conditional.dists[opt]["lr"]
        assert d.mean == pytest.approx(lr.to_unit(10**t), abs=0.06)  # type: ignore[union-attr]
    # the pooled marginal sits between the two modes and is much wider
    assert prior.dists["lr"].std > 2 * prior.conditional.dists["adam"]["lr"].std  # type: ignore[union-attr]
    assert abs(math.log10(port[0]["lr"]) - target[port[0]["optimizer"]]) < 0.2
