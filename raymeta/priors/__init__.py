"""Meta-learned fine-tuning priors: search spaces, per-hyperparameter priors, portfolios.

Pure numpy (never Ray, never a training loop): the statistics of ``raymeta priors fit``, whose
driver lives in ``raymeta.finetune.fit``; ``raymeta.orchestration.tune.space`` turns priors into
Ray Tune domains. Typical use::

    priors = load_priors(load_meta_checkpoint(DIR))
    configs = priors.prior("learned").sample(8, np.random.default_rng(0))
    first = priors.portfolio[0]
"""

from raymeta.priors.artifact import FORMAT, VERSION, Priors, load_priors
from raymeta.priors.portfolio import greedy_portfolio, normalised_regret
from raymeta.priors.prior import CategoricalDist, Conditional, NumericDist, Prior, broad_prior
from raymeta.priors.space import Categorical, Float, Int, SearchSpace
from raymeta.priors.table import OBJECTIVES, EvalTable

__all__ = [
    "FORMAT",
    "OBJECTIVES",
    "VERSION",
    "Categorical",
    "CategoricalDist",
    "Conditional",
    "EvalTable",
    "Float",
    "Int",
    "NumericDist",
    "Prior",
    "Priors",
    "SearchSpace",
    "broad_prior",
    "greedy_portfolio",
    "load_priors",
    "normalised_regret",
]
