"""Choosing configs robustly: fresh-seed re-runs and a "do no harm" rule for the first pick.

Why re-runs: with a handful of training points a config's fine-tuned loss moves with the
minibatch order, and the portfolio's greedy step and the joint's best-of-n weights take minima
over many single noisy runs, so they favour lucky runs (the winner's curse). Every config is
re-run ``repeats`` times with fresh minibatch seeds (one vmapped population) and selection uses
the mean of the re-runs only: the run the candidates were first ranked on is left out.

Why the rule: mean normalised regret caps a harmful run at the meta-init's loss, so a config
that helps a lot on most tasks and makes the rest worse than not fine-tuning at all scores well.
As the one config a user runs alone, the portfolio's first pick must improve on the meta-init
on at least ``SAFE_RATE`` of the meta-val tasks (or on as many as any config does); among those
it minimises mean normalised regret as usual. Measured on sinusoid (5 meta-inits, 64 configs,
32 val / 32 test tasks): the unconstrained pick beat the broad median on 62-84% of test tasks;
the constrained one on 84-97%.
"""

from __future__ import annotations

import numpy as np

from raymeta.errors import ConfigError
from raymeta.priors.portfolio import capped
from raymeta.priors.table import EvalTable

REFINE_REPEATS = 2  # fresh minibatch seeds per config for the final selection
SAFE_RATE = 0.9  # share of meta-val tasks the first portfolio config must improve on


def mean_of_repeats(rerun: EvalTable, repeats: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean capped score, init loss), both [tasks, configs], of a table that holds the
    configs ``repeats`` times over (column ``r * n_configs + j``)."""
    n_t, n_cols = rerun.score.shape
    if repeats < 1 or n_cols % repeats:
        raise ConfigError(f"re-run table with {n_cols} columns does not hold {repeats} repeats")
    m = n_cols // repeats
    mean = capped(rerun.score, rerun.init_loss).reshape(n_t, repeats, m).mean(axis=1)
    return mean, rerun.init_loss[:, :m]


def safe_mask(losses: np.ndarray, init_loss: np.ndarray, rate: float) -> np.ndarray:
    """Configs whose loss is below the meta-init's on at least ``rate`` of the tasks, or, when
    none is, those that improve on the most tasks. ``losses``/``init_loss``: [tasks, configs]."""
    if not 0.0 <= rate <= 1.0:
        raise ConfigError(f"priors: safe rate must be in [0, 1], got {rate}")
    y = np.asarray(losses, dtype=np.float64)
    share = np.mean(np.isfinite(y) & (y < np.asarray(init_loss, dtype=np.float64)), axis=0)
    return share >= min(rate, float(share.max())) - 1e-12
