"""Robust selection: fresh-seed re-run averaging, the "do no harm" mask, the constrained first
portfolio pick (against brute force on small tables), and bad input."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from raymeta.errors import ConfigError, DataError
from raymeta.finetune.hparams import broad_space
from raymeta.priors import broad_prior
from raymeta.priors.fit import fit_from_table
from raymeta.priors.portfolio import greedy_portfolio, normalised_regret
from raymeta.priors.refine import mean_of_repeats, safe_mask
from raymeta.priors.table import EvalTable

SPACE = broad_space(["mlp"], max_batch=5, max_steps=100)


def _table(final: np.ndarray, init: float | np.ndarray) -> EvalTable:
    return EvalTable(final[:, :, None], [0], np.broadcast_to(init, final.shape).copy())


def test_mean_of_repeats_matches_a_loop_and_caps_at_init() -> None:
    rng = np.random.default_rng(0)
    n_t, m, reps = 3, 4, 3
    final = rng.uniform(0.0, 2.0, size=(n_t, reps * m))
    final[0, 5] = np.nan  # diverged: counts as the init loss
    mean, init = mean_of_repeats(_table(final, 1.5), reps)
    want = np.zeros((n_t, m))
    for t in range(n_t):
        for j in range(m):
            runs = [final[t, r * m + j] for r in range(reps)]
            want[t, j] = np.mean([min(v, 1.5) if np.isfinite(v) else 1.5 for v in runs])
    assert mean == pytest.approx(want)
    assert init.shape == (n_t, m)
    with pytest.raises(ConfigError):
        mean_of_repeats(_table(final, 1.5), 5)


def test_safe_mask_counts_tasks_improved_and_falls_back_to_the_best_share() -> None:
    init = np.ones((10, 3))
    losses = np.ones((10, 3))
    losses[:9, 0] = 0.5  # improves 9 of 10 tasks
    losses[:5, 1] = 0.1  # 5 of 10
    losses[:, 2] = np.nan  # never
    assert safe_mask(losses, init, 0.9).tolist() == [True, False, False]
    assert safe_mask(losses, init, 0.5).tolist() == [True, True, False]
    # nobody reaches 95%: the configs with the highest share stay allowed
    assert safe_mask(losses, init, 0.95).tolist() == [True, False, False]
    with pytest.raises(ConfigError):
        safe_mask(losses, init, 1.5)


def test_constrained_first_pick_against_brute_force() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        r = rng.uniform(size=(6, 7))
        allowed = rng.uniform(size=7) < 0.5
        allowed[rng.integers(7)] = True
        got = greedy_portfolio(r, 3, allowed)
        ok = np.nonzero(allowed)[0]
        assert got[0] == ok[np.argmin(r[:, ok].mean(axis=0))]
        # later picks are the plain greedy steps given the first
        cur = r[:, got[0]]
        for j in got[1:]:
            best = min(
                (c for c in range(7) if c not in got[: got.index(j)]),
                key=lambda c: (np.minimum(cur, r[:, c]).mean(), c),
            )
            assert j == best
            cur = np.minimum(cur, r[:, j])
        assert greedy_portfolio(r, 3, np.ones(7, dtype=bool)) == greedy_portfolio(r, 3)
    with pytest.raises(DataError):
        greedy_portfolio(r, 3, np.zeros(7, dtype=bool))
    with pytest.raises(DataError):
        greedy_portfolio(r, 3, np.ones(5, dtype=bool))


def test_brute_force_pair_still_matches_with_all_allowed() -> None:
    r = np.random.default_rng(5).uniform(size=(5, 6))
    first = greedy_portfolio(r, 1, np.ones(6, dtype=bool))[0]
    pair = min(
        (p for p in itertools.permutations(range(6), 2) if p[0] == first),
        key=lambda p: np.minimum(r[:, p[0]], r[:, p[1]]).mean(),
    )
    assert greedy_portfolio(r, 2, np.ones(6, dtype=bool)) == list(pair)


def test_fit_picks_a_safe_first_config_and_uses_the_selection_table() -> None:
    configs = broad_prior(SPACE).sample(4, np.random.default_rng(0))
    n_t = 10
    final = np.full((n_t, 4), 0.9)
    final[:7, 0] = 0.0  # risky: best on 7 tasks, worse than the meta-init (1.0) on 3
    final[7:, 0] = 5.0
    final[:, 1] = 0.5  # safe: a moderate gain on every task
    table = _table(final, 1.0)
    risky = normalised_regret(final, cap=table.init_loss).mean(axis=0)
    assert risky[0] < risky[1]  # unconstrained mean regret prefers the risky config
    _, port, _, info = fit_from_table(SPACE, configs, table, 0.25, 2, best_of=None)
    assert port[0] == configs[1] and info["first_pick_safe_configs"] == 3
    _, port, _, _ = fit_from_table(SPACE, configs, table, 0.25, 2, best_of=None, safe_rate=None)
    assert port[0] == configs[0]
    # a selection table (e.g. re-run means) overrides the noisy final losses
    sel = final.copy()
    sel[:, 2] = 0.4
    _, port, _, _ = fit_from_table(SPACE, configs, table, 0.25, 2, best_of=None, selection=sel)
    assert port[0] == configs[2]
    with pytest.raises(ConfigError):
        fit_from_table(SPACE, configs, table, 0.25, 2, selection=sel[:, :3])
