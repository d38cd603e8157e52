"""Meta-learned fine-tuning priors: search space, per-hyperparameter priors, portfolios.

Pure numpy/torch (never Ray); ``raymeta.orchestration.tune.space`` turns these into Ray Tune
domains. Typical use::

    priors = load_priors(load_meta_checkpoint(DIR))
    configs = priors.prior("learned").sample(8, np.random.default_rng(0))
    first = priors.portfolio[0]
"""

from raymeta.priors.artifact import FORMAT, VERSION, Priors, load_priors
from raymeta.priors.fit import fit_priors
from raymeta.priors.portfolio import greedy_portfolio, normalised_regret
from raymeta.priors.prior import CategoricalDist, Conditional, NumericDist, Prior, broad_prior
from raymeta.priors.space import (
    WEIGHT_DECAY_FLOOR,
    Categorical,
    Float,
    Int,
    SearchSpace,
    broad_space,
)

__all__ = [
    "FORMAT",
    "VERSION",
    "WEIGHT_DECAY_FLOOR",
    "Categorical",
    "CategoricalDist",
    "Conditional",
    "Float",
    "Int",
    "NumericDist",
    "Prior",
    "Priors",
    "SearchSpace",
    "broad_prior",
    "broad_space",
    "fit_priors",
    "greedy_portfolio",
    "load_priors",
    "normalised_regret",
]
